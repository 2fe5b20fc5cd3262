"""The per-epoch cluster refresh: embed the training set, k-means per class
(k-means++ init, ``clustr_fast.kmeans_per_group``), sigma^2 by ``cluster_variance``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import clustr_fast

from ..ranks import all_reduce_sum, batches

EMBED_BATCH = 1024


@dataclass
class Clustering:
    """``assign [N]`` (cluster of each training example), ``centers [C, F]``,
    ``center_classes [C]`` (= cluster // k) and ``variance`` (0-d, the training-set sigma^2)."""

    assign: torch.Tensor
    centers: torch.Tensor
    center_classes: torch.Tensor
    variance: torch.Tensor
    loss: float | None = None

    def to_state(self):
        return {"assign": self.assign.cpu(), "centers": self.centers.cpu(),
                "center_classes": self.center_classes.cpu(), "variance": self.variance.cpu(),
                "loss": self.loss}

    @classmethod
    def from_state(cls, s, device):
        return cls(s["assign"].to(device), s["centers"].to(device), s["center_classes"].to(device),
                   s["variance"].to(device), s.get("loss"))


@torch.no_grad()
def embed(net, x, device, batch_size: int = EMBED_BATCH):
    """Features ``[N, F]`` of ``x`` on ``device`` (network in eval mode, restored afterwards)."""
    was_training = net.training
    net.eval()
    try:
        return torch.cat([net(x[s:s + batch_size].to(device, non_blocking=True))[1]
                          for s in range(0, x.shape[0], batch_size)])
    finally:
        net.train(was_training)


def cluster(feats, y, k: int, iters: int, generator, n_init: int = 1) -> Clustering:
    """k clusters per class of ``feats [N, F]`` (labels ``y [N]``); cluster ``c*k + j`` is class c's j-th.
    ``n_init`` k-means++ seedings per class, the fit of least inertia kept."""
    assign, centers = clustr_fast.kmeans_per_group(feats, y, k, max_iter=iters, generator=generator, n_init=n_init)
    center_classes = torch.arange(centers.shape[0], device=centers.device) // k
    variance = clustr_fast.cluster_variance(feats, centers, assign)
    return Clustering(assign, centers, center_classes, variance.detach())


@torch.no_grad()
def accuracy(model, x, y, device, batch_size: int = EMBED_BATCH, world=None) -> float:
    """Fraction of ``x`` that ``model`` (returning class scores) labels ``y``, in eval mode.

    ``world`` with several ranks: each rank scores its batches (:func:`clustr_fast.ranks.batches`,
    the batches of one process) and the hits are summed, so every rank returns the same
    fraction as one process."""
    was_training = model.training
    model.eval()
    try:
        hits = 0
        spans = [(s, s + batch_size) for s in range(0, x.shape[0], batch_size)] if world is None else \
            batches(x.shape[0], batch_size, world)
        for s, e in spans:
            pred = model(x[s:e].to(device)).argmax(1)
            hits += int((pred.cpu() == y[s:e]).sum())
        if world is not None:
            hits = int(all_reduce_sum(torch.tensor([hits], dtype=torch.int64), world))
        return hits / max(x.shape[0], 1)
    finally:
        model.train(was_training)
