"""Public entry points for cluster_means and cluster_variance.

    means[m] = sum_{i: ids_i = m} f_i / max(count_m, 1)        sigma^2 = sum_i ||f_i - mu_{a_i}||^2 / (N - 1)

Both are one scatter-add or one gathered difference plus a reduction: memory-bound
work that ATen already does in a single pass. ``cluster_means`` stays on the
reference implementation. ``cluster_variance`` has an analytic backward
(:class:`ClusterVariance`): with D_i = f_i - mu_{a_i} and c = 2 g / (N - 1),

    grad_f_i = c D_i,    grad_mu_k = -c sum_{i: a_i = k} D_i    (one index_add)

whereas autograd of the plain expression scatters the centers' gradient with an
accumulating index_put, about 4x slower on the CPU. Both passes run in row chunks
(``CHUNK_ENTRIES``): no [N, d] temporary. The Magnet loss composes it with its fused
kernel.
"""
import torch

from .._validate import acc_dtype, check_cluster_variance
from ..reference import cluster_means  # noqa: F401


# Rows per chunk times d: the gathered centers and the differences of one chunk are at most
# 2^22 entries each (16 MB in float32), so no [N, d] temporary is made (the Magnet loss at
# N = 1,000,000, d = 128 otherwise held 1 GB of them) and the backward recomputes them.
CHUNK_ENTRIES = 1 << 22


def _chunks(n: int, d: int):
    step = max(1, CHUNK_ENTRIES // max(d, 1))
    return ((r0, min(n, r0 + step)) for r0 in range(0, n, step))


class ClusterVariance(torch.autograd.Function):
    """``sum_i ||f_i - mu_{a_i}||^2 / (N - 1)`` for ``f`` [N, d], ``mu`` [C, d] (same dtype), ``assign`` [N].

    Row chunks of at most ``CHUNK_ENTRIES`` entries (one chunk, one dot product, for a training
    batch), their sums added in float64; saves only its inputs. At N = 1,000,000, d = 128 on the
    CPU one float32 dot over all N*d entries was off by 3.5e-3 of the float64 value, the chunks by
    2e-5, and the peak memory growth fell from 980 to 149 MB (resident set, 2026-11-26).
    """

    @staticmethod
    def forward(ctx, f, mu, assign):
        assign = assign.long()
        ctx.save_for_backward(f, mu, assign)
        total = f.new_zeros((), dtype=torch.float64)  # chunk sums add up in float64
        for r0, r1 in _chunks(f.shape[0], f.shape[1]):
            flat = (f[r0:r1] - mu[assign[r0:r1]]).reshape(-1)
            total += torch.dot(flat, flat)
        return (total / (f.shape[0] - 1)).to(f.dtype)

    @staticmethod
    def backward(ctx, grad):
        f, mu, assign = ctx.saved_tensors
        c = 2.0 * grad / (f.shape[0] - 1)
        need_f, need_mu = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_f = torch.empty_like(f) if need_f else None
        grad_mu = mu.new_zeros(mu.shape) if need_mu else None
        for r0, r1 in _chunks(f.shape[0], f.shape[1]):
            scaled = (f[r0:r1] - mu[assign[r0:r1]]).mul_(c)
            if need_f:
                grad_f[r0:r1] = scaled
            if need_mu:
                grad_mu.index_add_(0, assign[r0:r1], scaled)
        return grad_f, (grad_mu.neg_() if need_mu else None), None


def cluster_variance_core(f, mu, assign):
    """Unchecked: ``f``, ``mu`` already in the accumulation dtype, N >= 2."""
    return ClusterVariance.apply(f, mu, assign)


def cluster_variance(feats, centers, assign):
    """``sigma^2 = sum_i ||f_i - mu_{a_i}||^2 / (N - 1)`` as a 0-d tensor (N >= 2).

    Differentiable in ``feats`` and ``centers``.
    """
    check_cluster_variance(feats, centers, assign)
    acc = acc_dtype(feats.dtype)
    return cluster_variance_core(feats.to(acc), centers.to(acc), assign)
