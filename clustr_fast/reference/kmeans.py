"""Reference k-means pieces: k-means++ seeding, assignment and the Lloyd update."""

import torch

from .._validate import acc_dtype, check_kmeans_assign, check_kmeans_plusplus, check_kmeans_update
from .cluster_means import _cluster_means
from .pairwise_sqdist import _sqdist


def kmeans_assign(x, centers, *, precision="highest"):
    """Nearest center of each row of ``x`` [N, d] among ``centers`` [K, d].

    Returns ``(labels int64 [N], sqdist [N])`` with ties going to the lower index;
    ``sqdist`` is in the accumulation dtype.
    """
    check_kmeans_assign(x, centers, precision)
    acc = acc_dtype(x.dtype)
    d = _sqdist(x.to(acc), centers.to(acc))
    labels = d.argmin(1)                                         # first minimum on ties
    return labels, d.gather(1, labels[:, None])[:, 0]


def kmeans_update(x, labels, k, *, prev_centers=None, sample_weight=None):
    """Lloyd update: the (weighted) mean of each of the ``k`` clusters.

        centers_j = sum_{labels_i = j} w_i x_i / W_j,   W_j = sum_{labels_i = j} w_i

    Returns ``(centers [k, d] in the accumulation dtype, counts)``: ``counts`` int64 [k] (the rows
    of each cluster) without ``sample_weight``, else the weight sums ``W`` [k] (accumulation dtype).
    A cluster with W_j = 0 (empty) keeps its row of ``prev_centers``; with ``prev_centers=None`` it
    is zero.
    """
    check_kmeans_update(x, labels, k, prev_centers, sample_weight)
    acc = acc_dtype(x.dtype)
    if sample_weight is None:
        means, counts = _cluster_means(x.to(acc), labels, int(k))
        keep = counts > 0
    else:
        w = sample_weight.detach().to(acc)
        counts = torch.zeros(int(k), dtype=acc, device=x.device).index_add_(0, labels.long(), w)
        sums = torch.zeros((int(k), x.shape[1]), dtype=acc, device=x.device).index_add_(
            0, labels.long(), x.to(acc) * w[:, None])
        keep = counts > 0
        means = torch.where(keep[:, None], sums / torch.where(keep, counts, 1)[:, None], 0.0)
    if prev_centers is not None:
        means = torch.where(keep[:, None], means, prev_centers.to(acc))
    return means, counts


def _sample(weights, draws):
    """Indices with probability proportional to ``weights`` (>= 0, sum > 0), one per draw in [0, 1)."""
    cum = torch.cumsum(weights.to(torch.float64), 0)
    idx = torch.searchsorted(cum, draws * cum[-1], right=True)
    last = (cum == cum[-1]).to(torch.uint8).argmax()             # last index with weight > 0
    return torch.minimum(idx, last)


def kmeans_plusplus(x, k, *, generator=None, n_local_trials=None, sample_weight=None):
    """Greedy k-means++ seeding of ``k`` centers from the rows of ``x`` [N, d] (scikit-learn's).

    The first center is uniform (with ``sample_weight``: drawn with probability ``w_i / sum w``).
    Each next step draws ``n_local_trials`` candidates with probability proportional to
    ``w_i D_i^2`` (``D_i^2`` the squared distance to the nearest chosen center, ``w_i = 1``
    without weights) and keeps the one giving the least potential ``sum_i w_i D_i^2`` (ties:
    first candidate). ``n_local_trials=None`` -> ``2 + int(log k)``; 1 is plain D^2 sampling
    (Arthur & Vassilvitskii). When the potential is 0 (duplicates), candidates are drawn
    uniformly among the rows of positive weight not chosen yet. Random numbers come from
    ``torch.rand``/``torch.randint`` with ``generator`` on ``x``'s device, so a seed fixes the
    result.

    Returns ``(centers [k, d] in the accumulation dtype, indices int64 [k])``.
    """
    trials = check_kmeans_plusplus(x, k, n_local_trials, sample_weight)
    k = int(k)
    acc = acc_dtype(x.dtype)
    with torch.no_grad():
        xa = x.detach().to(acc)
        n, dev = xa.shape[0], xa.device
        w = None if sample_weight is None else sample_weight.detach().to(acc)
        chosen = torch.zeros(n, dtype=torch.bool, device=dev)
        if w is None:
            first = torch.randint(0, n, (1,), generator=generator, device=dev)
        else:
            first = _sample(w, torch.rand(1, generator=generator, device=dev, dtype=torch.float64))
        indices = [first]
        chosen[first] = True
        closest = torch.cdist(xa[first], xa, compute_mode="donot_use_mm_for_euclid_dist")[0].square()
        for _ in range(1, k):
            wd = closest if w is None else w * closest
            pot = wd.sum()
            free = ~chosen if w is None else ~chosen & (w > 0)
            weights = torch.where(pot > 0, wd, free.to(acc))
            draws = torch.rand(trials, generator=generator, device=dev, dtype=torch.float64)
            cand = _sample(weights, draws)                          # [T]
            dc = torch.cdist(xa[cand], xa, compute_mode="donot_use_mm_for_euclid_dist").square()
            dc = torch.minimum(dc, closest[None, :])
            best = (dc if w is None else dc * w).sum(1).argmin()
            closest = dc[best]
            pick = cand[best].reshape(1)
            chosen[pick] = True
            indices.append(pick)
        indices = torch.cat(indices)
    return x.to(acc)[indices], indices
