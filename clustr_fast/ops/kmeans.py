"""Public entry points for kmeans_plusplus, kmeans_assign, kmeans_update.

Reference backend only for now: the fused kernels (custom ops with
register_fake/register_autograd, dispatched by clustr_fast._backend) replace
these calls as they land. Inputs are validated by the reference.
"""
from ..reference import kmeans_plusplus, kmeans_assign, kmeans_update  # noqa: F401
