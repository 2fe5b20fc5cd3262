"""Reference per-cluster means and the within-cluster variance."""

import torch

from .._validate import acc_dtype, check_cluster_means, check_cluster_variance


def _cluster_means(f, ids, m):
    """Unchecked core: ``f`` already in the accumulation dtype."""
    ids = ids.long()
    sums = f.new_zeros(m, f.shape[1]).index_add(0, ids, f)
    counts = torch.bincount(ids, minlength=m)
    return sums / counts.clamp_min(1).to(f.dtype)[:, None], counts


def cluster_means(feats, ids, num_clusters):
    """Means of ``feats`` [N, d] grouped by ``ids`` [N] in [0, M).

    Returns ``(means [M, d] in the accumulation dtype, counts int64 [M])``; an empty
    cluster has a zero mean (and count 0). Differentiable in ``feats``.
    """
    check_cluster_means(feats, ids, num_clusters)
    return _cluster_means(feats.to(acc_dtype(feats.dtype)), ids, int(num_clusters))


def _cluster_variance(f, mu, assign):
    """Unchecked core: ``f``, ``mu`` already in the accumulation dtype."""
    diff = f - mu[assign.long()]
    return (diff * diff).sum() / (f.shape[0] - 1)


def cluster_variance(feats, centers, assign):
    """``sigma^2 = sum_i ||f_i - mu_{a_i}||^2 / (N - 1)`` as a 0-d tensor (N >= 2).

    Differentiable in ``feats`` and ``centers``.
    """
    check_cluster_variance(feats, centers, assign)
    acc = acc_dtype(feats.dtype)
    return _cluster_variance(feats.to(acc), centers.to(acc), assign)
