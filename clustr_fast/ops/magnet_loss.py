"""Public entry points for magnet_loss, magnet_loss_batch.

Reference backend only for now: the fused kernels (custom ops with
register_fake/register_autograd, dispatched by clustr_fast._backend) replace
these calls as they land. Inputs are validated by the reference.
"""
from ..reference import magnet_loss, magnet_loss_batch  # noqa: F401
