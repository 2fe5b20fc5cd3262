"""Public entry points for cluster_means and cluster_variance.

    means[m] = sum_{i: ids_i = m} f_i / max(count_m, 1)        sigma^2 = sum_i ||f_i - mu_{a_i}||^2 / (N - 1)

Both are one scatter-add or one gathered difference plus a reduction: memory-bound
work that ATen already does in a single pass. ``cluster_means`` stays on the
reference implementation. ``cluster_variance`` has an analytic backward
(:class:`ClusterVariance`): with D_i = f_i - mu_{a_i} and c = 2 g / (N - 1),

    grad_f_i = c D_i,    grad_mu_k = -c sum_{i: a_i = k} D_i    (one index_add)

whereas autograd of the plain expression scatters the centers' gradient with an
accumulating index_put, about 4x slower on the CPU. Large inputs run in row chunks
(``CHUNK_ENTRIES``): no [N, d] temporary. The Magnet loss composes it with its fused
kernel.
"""
import torch

from .._validate import acc_dtype, check_cluster_variance
from ..reference import cluster_means  # noqa: F401


# Inputs of more than ONE_PASS_MAX_ENTRIES entries are walked in row chunks of at most
# CHUNK_ENTRIES entries (16 MB in float32): the Magnet loss at N = 1,000,000, d = 128 held
# 1 GB of [N, d] temporaries for sigma^2 otherwise. Smaller inputs take one pass (three ATen
# calls), since every chunk costs a few launches on a GPU.
CHUNK_ENTRIES = 1 << 22
ONE_PASS_MAX_ENTRIES = 1 << 26


def _chunks(n: int, d: int):
    if n * d <= ONE_PASS_MAX_ENTRIES:
        return [(0, n)]
    step = max(1, CHUNK_ENTRIES // max(d, 1))
    return [(r0, min(n, r0 + step)) for r0 in range(0, n, step)]


def _center_minus_row(f, mu, assign, r0, r1):
    """``mu_{a_i} - f_i`` for rows ``r0:r1``: one temporary."""
    return mu.index_select(0, assign[r0:r1]).sub_(f[r0:r1])


class ClusterVariance(torch.autograd.Function):
    """``sum_i ||f_i - mu_{a_i}||^2 / (N - 1)`` for ``f`` [N, d], ``mu`` [C, d] (same dtype), ``assign`` [N].

    One pass, or row chunks above ``ONE_PASS_MAX_ENTRIES`` with their sums added in float64,
    which bounds the peak memory and keeps the float32 sum accurate (docs/decisions.md); saves
    only its inputs (the backward recomputes the differences).
    """

    @staticmethod
    def forward(ctx, f, mu, assign):
        assign = assign.long()
        ctx.save_for_backward(f, mu, assign)
        total = f.new_zeros((), dtype=torch.float64)
        for r0, r1 in _chunks(f.shape[0], f.shape[1]):
            flat = _center_minus_row(f, mu, assign, r0, r1).reshape(-1)
            total += torch.dot(flat, flat)
        return (total / (f.shape[0] - 1)).to(f.dtype)

    @staticmethod
    def backward(ctx, grad):
        f, mu, assign = ctx.saved_tensors
        c = -2.0 * grad / (f.shape[0] - 1)
        need_f, need_mu = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        chunks = _chunks(f.shape[0], f.shape[1])
        grad_f = None
        if need_f and len(chunks) > 1:
            grad_f = torch.empty_like(f)
        grad_mu = mu.new_zeros(mu.shape) if need_mu else None
        for r0, r1 in chunks:
            scaled = _center_minus_row(f, mu, assign, r0, r1).mul_(c)  # 2 g (f_i - mu_{a_i}) / (N - 1)
            if need_f:
                if len(chunks) == 1:
                    grad_f = scaled
                else:
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
