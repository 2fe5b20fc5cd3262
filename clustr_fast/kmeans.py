"""KMeans estimator and the per-group (per-class) k-means refresh of ClusTR.

Python loops over the k-means ops (kmeans_plusplus, kmeans_assign, kmeans_update).
"""
from __future__ import annotations

import torch

from .ops.kmeans import kmeans_assign, kmeans_plusplus, kmeans_update


def _lloyd(x, centers, max_iter, tol):
    prev_inertia = None
    labels, d = kmeans_assign(x, centers)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        new_centers, _ = kmeans_update(x, labels, centers.shape[0], prev_centers=centers)
        shift = (new_centers - centers).square().sum().item()
        centers = new_centers
        labels, d = kmeans_assign(x, centers)
        inertia = d.sum().item()
        if shift <= tol or (prev_inertia is not None and prev_inertia - inertia <= 0):
            break
        prev_inertia = inertia
    return centers, labels, d.sum().item(), n_iter


class KMeans:
    """k-means with k-means++ seeding (scikit-learn names: fit, predict, cluster_centers_...).

    Runs on the device of its input; float16/bfloat16 inputs are computed in float32.
    """

    def __init__(self, n_clusters, *, init="k-means++", n_init=1, max_iter=300, tol=1e-4, seed=None):
        if init != "k-means++":
            raise ValueError(f"KMeans: `init` must be 'k-means++', got {init!r}")
        self.n_clusters, self.init, self.n_init = int(n_clusters), init, int(n_init)
        self.max_iter, self.tol, self.seed = int(max_iter), float(tol), seed

    def fit(self, x):
        x = torch.as_tensor(x)
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed if self.seed is not None else torch.seed())
        tol = self.tol * x.var(0).mean().item() * x.shape[1] if x.shape[0] > 1 else 0.0
        best = None
        for _ in range(self.n_init):
            centers, _ = kmeans_plusplus(x, self.n_clusters, generator=gen)
            res = _lloyd(x, centers, self.max_iter, tol)
            if best is None or res[2] < best[2]:
                best = res
        self.cluster_centers_, self.labels_, self.inertia_, self.n_iter_ = best
        return self

    def predict(self, x):
        return kmeans_assign(torch.as_tensor(x).to(self.cluster_centers_.dtype), self.cluster_centers_)[0]

    def fit_predict(self, x):
        return self.fit(x).labels_


def kmeans_per_group(x, groups, k, *, max_iter=20, tol=1e-4, generator=None):
    """k clusters in each group: returns (labels [N] = group * k + j, centers [G*k, d])."""
    groups = torch.as_tensor(groups, device=x.device)
    num_groups = int(groups.max().item()) + 1
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    centers = []
    for g in range(num_groups):
        idx = (groups == g).nonzero().squeeze(1)
        if idx.numel() < k:
            raise ValueError(f"kmeans_per_group: group {g} has {idx.numel()} rows, fewer than k={k}")
        xg = x[idx].float() if x.dtype in (torch.float16, torch.bfloat16) else x[idx]
        c, _ = kmeans_plusplus(xg, k, generator=generator)
        c, lab, _, _ = _lloyd(xg, c, max_iter, tol)
        labels[idx] = lab + g * k
        centers.append(c)
    return labels, torch.cat(centers)
