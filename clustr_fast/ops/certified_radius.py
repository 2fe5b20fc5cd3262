"""Public entry points for certified_radius.

Reference backend only for now: the fused kernels (custom ops with
register_fake/register_autograd, dispatched by clustr_fast._backend) replace
these calls as they land. Inputs are validated by the reference.
"""
from ..reference import certified_radius  # noqa: F401
