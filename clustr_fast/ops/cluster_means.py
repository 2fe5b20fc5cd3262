"""Public entry points for cluster_means, cluster_variance (plain PyTorch).

    means[m] = sum_{i: ids_i = m} f_i / max(count_m, 1)        sigma^2 = sum_i ||f_i - mu_{a_i}||^2 / (N - 1)

Both are one scatter-add or one gathered difference plus a reduction: memory-bound
work that ATen already does in a single pass, so they stay on the reference
implementation (which also validates the inputs). The Magnet loss composes them with
its fused kernel and lets autograd carry their gradients.
"""
from ..reference import cluster_means, cluster_variance  # noqa: F401
