"""Public entry points for soft_cluster_logits, soft_cluster_predict.

Reference backend only for now: the fused kernels (custom ops with
register_fake/register_autograd, dispatched by clustr_fast._backend) replace
these calls as they land. Inputs are validated by the reference.
"""
from ..reference import soft_cluster_logits, soft_cluster_predict  # noqa: F401
