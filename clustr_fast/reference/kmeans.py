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


def kmeans_update(x, labels, k, *, prev_centers=None):
    """Lloyd update: the mean of each of the ``k`` clusters.

    Returns ``(centers [k, d] in the accumulation dtype, counts int64 [k])``. An empty
    cluster keeps its row of ``prev_centers``; with ``prev_centers=None`` it is zero
    (``counts == 0`` tells the caller).
    """
    check_kmeans_update(x, labels, k, prev_centers)
    acc = acc_dtype(x.dtype)
    means, counts = _cluster_means(x.to(acc), labels, int(k))
    if prev_centers is not None:
        means = torch.where((counts > 0)[:, None], means, prev_centers.to(acc))
    return means, counts


def _sample(weights, draws):
    """Indices with probability proportional to ``weights`` (>= 0, sum > 0), one per draw in [0, 1)."""
    cum = torch.cumsum(weights.to(torch.float64), 0)
    idx = torch.searchsorted(cum, draws * cum[-1], right=True)
    last = (cum == cum[-1]).to(torch.uint8).argmax()             # last index with weight > 0
    return torch.minimum(idx, last)


def kmeans_plusplus(x, k, *, generator=None, n_local_trials=None):
    """Greedy k-means++ seeding of ``k`` centers from the rows of ``x`` [N, d] (scikit-learn's).

    The first center is uniform. Each next step draws ``n_local_trials`` candidates
    with probability proportional to ``D^2`` (the squared distance to the nearest
    chosen center) and keeps the one giving the least potential ``sum_i D_i^2``
    (ties: first candidate). ``n_local_trials=None`` -> ``2 + int(log k)``; 1 is
    plain D^2 sampling (Arthur & Vassilvitskii). When every point already sits on a
    chosen center (duplicates), candidates are drawn uniformly among the points
    not chosen yet. Random numbers come from ``torch.rand``/``torch.randint`` with
    ``generator`` on ``x``'s device, so a seed fixes the result.

    Returns ``(centers [k, d] in the accumulation dtype, indices int64 [k])``.
    """
    trials = check_kmeans_plusplus(x, k, n_local_trials)
    k = int(k)
    acc = acc_dtype(x.dtype)
    with torch.no_grad():
        xa = x.detach().to(acc)
        n, dev = xa.shape[0], xa.device
        chosen = torch.zeros(n, dtype=torch.bool, device=dev)
        first = torch.randint(0, n, (1,), generator=generator, device=dev)
        indices = [first]
        chosen[first] = True
        closest = torch.cdist(xa[first], xa, compute_mode="donot_use_mm_for_euclid_dist")[0].square()
        for _ in range(1, k):
            pot = closest.sum()
            weights = torch.where(pot > 0, closest, (~chosen).to(acc))
            draws = torch.rand(trials, generator=generator, device=dev, dtype=torch.float64)
            cand = _sample(weights, draws)                          # [T]
            dc = torch.cdist(xa[cand], xa, compute_mode="donot_use_mm_for_euclid_dist").square()
            dc = torch.minimum(dc, closest[None, :])
            best = dc.sum(1).argmin()
            closest = dc[best]
            pick = cand[best].reshape(1)
            chosen[pick] = True
            indices.append(pick)
        indices = torch.cat(indices)
    return x.to(acc)[indices], indices
