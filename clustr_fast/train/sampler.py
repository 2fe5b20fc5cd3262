"""The cluster-neighbourhood sampler of the Magnet loss (Rippel et al., 2016).

A batch is a seed cluster, drawn with probability proportional to the mean recent
loss of its members (uniform before any loss is known), then its ``m - 1``
nearest clusters of other classes (nearest center first), then ``d`` samples of
each cluster (without replacement, or with it when the cluster is smaller than ``d``).
Batch = ``m * d`` examples; with fewer than ``m - 1`` other-class clusters, all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import clustr_fast


@dataclass
class NeighbourhoodBatch:
    """``indices [B]`` into the training set; ``cluster_ids [B]`` local in 0..m'-1
    (0 is the seed); ``cluster_classes [m']``; ``clusters [m']`` the global cluster ids."""

    indices: torch.Tensor
    cluster_ids: torch.Tensor
    cluster_classes: torch.Tensor
    clusters: torch.Tensor


class NeighbourhoodSampler:
    """Samples neighbourhoods of ``m`` clusters x ``d`` examples; CPU tensors, own generator."""

    def __init__(self, num_examples: int, m: int, d: int, generator: torch.Generator):
        if m < 2 or d < 1:
            raise ValueError(f"NeighbourhoodSampler: need m >= 2 and d >= 1, got m={m}, d={d}")
        self.m, self.d, self.gen = int(m), int(d), generator
        self.example_loss = torch.full((num_examples,), float("nan"), dtype=torch.float64)
        self.assign = None

    def set_clusters(self, assign, centers, center_classes):
        """New clustering: ``assign [N]`` cluster of each example, ``centers [C, F]``, ``center_classes [C]``."""
        assign = assign.detach().cpu().long()
        if assign.shape[0] != self.example_loss.shape[0]:
            raise ValueError(f"NeighbourhoodSampler: `assign` has {assign.shape[0]} rows, "
                             f"expected {self.example_loss.shape[0]}")
        classes = center_classes.detach().cpu().long()
        c = classes.shape[0]
        self.assign, self.classes = assign, classes
        self.counts = torch.bincount(assign, minlength=c)
        self.members = torch.argsort(assign, stable=True)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.counts.cumsum(0)])
        dist = clustr_fast.pairwise_sqdist(centers.detach(), centers.detach()).cpu().double()
        invalid = (classes[:, None] == classes[None, :]) | (self.counts == 0)[None, :]
        dist = dist.masked_fill(invalid, float("inf"))
        order = torch.argsort(dist, dim=1, stable=True)[:, : self.m - 1]
        self.neighbours = order
        self.num_neighbours = torch.isfinite(dist.gather(1, order)).sum(1)

    def cluster_losses(self):
        """Mean recent loss per cluster ``[C]``; clusters with no known loss get the mean of the others."""
        known = ~torch.isnan(self.example_loss)
        c = self.classes.shape[0]
        sums = torch.zeros(c, dtype=torch.float64).index_add_(0, self.assign[known], self.example_loss[known])
        cnt = torch.bincount(self.assign[known], minlength=c).double()
        has = cnt > 0
        means = torch.where(has, sums / cnt.clamp_min(1), torch.zeros_like(sums))
        if has.any():
            means = torch.where(has, means, means[has].mean())
        return means

    def seed_probabilities(self):
        """``[C]``: proportional to the mean recent loss; uniform over non-empty clusters if all are 0."""
        nonempty = (self.counts > 0).double()
        w = self.cluster_losses().clamp_min(0) * nonempty
        if not torch.isfinite(w).all() or w.sum() <= 0:
            w = nonempty
        return w / w.sum()

    def sample(self) -> NeighbourhoodBatch:
        if self.assign is None:
            raise RuntimeError("NeighbourhoodSampler: call set_clusters before sample")
        seed = torch.multinomial(self.seed_probabilities(), 1, generator=self.gen)
        nbrs = self.neighbours[seed[0], : int(self.num_neighbours[seed[0]])]
        clusters = torch.cat([seed, nbrs])
        picks = []
        for c in clusters.tolist():
            n = int(self.counts[c])
            if n >= self.d:
                local = torch.randperm(n, generator=self.gen)[: self.d]
            else:
                local = torch.randint(0, n, (self.d,), generator=self.gen)
            picks.append(self.members[self.offsets[c] + local])
        ids = torch.arange(clusters.numel()).repeat_interleave(self.d)
        return NeighbourhoodBatch(torch.cat(picks), ids, self.classes[clusters], clusters)

    def update_losses(self, indices, losses):
        """Record the latest per-example losses (``indices [B]``, ``losses [B]``)."""
        self.example_loss[indices.cpu()] = losses.detach().cpu().double()

    def state_dict(self):
        return {"example_loss": self.example_loss.clone()}

    def load_state_dict(self, state):
        self.example_loss = state["example_loss"].clone().double()
