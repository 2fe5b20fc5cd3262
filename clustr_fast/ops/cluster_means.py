"""Public entry points for cluster_means, cluster_variance.

Reference backend only for now: the fused kernels (custom ops with
register_fake/register_autograd, dispatched by clustr_fast._backend) replace
these calls as they land. Inputs are validated by the reference.
"""
from ..reference import cluster_means, cluster_variance  # noqa: F401
