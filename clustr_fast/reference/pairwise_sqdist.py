"""Reference pairwise squared Euclidean distances."""

import torch

from .._validate import acc_dtype, check_pairwise_sqdist


def pairwise_sqdist(x, c, *, precision="highest"):
    """``D[i, j] = ||x_i - c_j||^2`` for x [N, d], c [K, d] -> [N, K] in the accumulation dtype.

    Computed as ``(||x||^2[:, None] + ||c||^2[None, :] - 2 x @ c.T).clamp_min(0)``.
    ``precision`` ("highest", "high", "medium") is validated but the reference
    always multiplies at the full precision of its dtype (float32 or float64), as
    far as the global ``torch.backends`` matmul settings allow. Differentiable in both.
    """
    check_pairwise_sqdist(x, c, precision)
    acc = acc_dtype(x.dtype)
    return _sqdist(x.to(acc), c.to(acc))


def _sqdist(x, c):
    """Unchecked core: ``x``, ``c`` already in the same accumulation dtype."""
    xx = (x * x).sum(1)
    cc = (c * c).sum(1)
    return (xx[:, None] + cc[None, :] - 2.0 * (x @ c.T)).clamp_min(0)
