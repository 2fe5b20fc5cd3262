"""One epoch of Magnet-loss training on neighbourhood batches (optionally with QTRADES).

Per step: a batch of m clusters x d samples from the sampler, features
``f = net(x).features``, the loss ``magnet_loss_batch(f, ids, classes, alpha)``
(batch cluster means and batch sigma^2, both differentiable) and its gradient
w.r.t. ``f`` are computed on a detached copy of ``f`` and timed ("loss"), then
back-propagated through the network. At the end of the epoch the clusters are
refreshed ("embed" + "kmeans"), which serves the next epoch and the prediction head.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

import clustr_fast

from .augment import random_crop_flip
from .qtrades import qtrades_term
from .refresh import cluster, embed


def refresh(net, train, sampler, *, k, iters, alpha, device, generator, timer):
    """Embed ``train``, cluster it per class, measure the full-set loss, hand the clusters to
    ``sampler``; returns the Clustering (with ``.loss``)."""
    with timer("embed"):
        feats = embed(net, train.x, device)
    with timer("kmeans"):
        clustering = cluster(feats, train.y.to(device), k, iters, generator)
    with timer("monitor"):
        clustering.loss = full_magnet_loss(feats, clustering, alpha)
    sampler.set_clusters(clustering.assign, clustering.centers, clustering.center_classes)
    return clustering


@torch.no_grad()
def full_magnet_loss(feats, clustering, alpha) -> float:
    """The Magnet loss of the whole training set against its refreshed centers and sigma^2:
    a deterministic measure of how well the features cluster (the batch loss is biased by
    the sampler, which seeks hard clusters)."""
    return float(clustr_fast.magnet_loss(feats, clustering.centers, clustering.assign, clustering.center_classes,
                                         alpha=alpha, variance=clustering.variance))


def magnet_epoch(net, optimizer, train, sampler, *, alpha, device, cpu_gen, dev_gen, timer,
                 augment=False, qtrades=None, max_steps=None, progress=False, desc="magnet"):
    """``planned = ceil(N / (m d))`` steps (one epoch passes as many examples as the set has),
    capped by ``max_steps``. ``qtrades``: None or ``{"lambda", "eps", "step"}``.
    Returns ``{"train_loss", "magnet_loss", "qtrades_loss", "steps", "planned_steps"}``."""
    net.train()
    planned = math.ceil(len(train) / (sampler.m * sampler.d))
    steps = planned if max_steps is None else min(planned, max_steps)
    sums = {"train_loss": 0.0, "magnet_loss": 0.0, "qtrades_loss": 0.0}
    bar = tqdm(range(steps), desc=desc, leave=False, disable=not progress)
    for _ in bar:
        batch = sampler.sample()
        x = train.x[batch.indices].to(device)
        if augment:
            x = random_crop_flip(x, cpu_gen)
        ids, classes = batch.cluster_ids.to(device), batch.cluster_classes.to(device)
        feats = net(x)[1]
        leaf = feats.detach().requires_grad_(True)
        with timer("loss"):
            losses = clustr_fast.magnet_loss_batch(leaf, ids, classes, alpha=alpha, reduction="none")
            magnet = losses.mean()
            grad, = torch.autograd.grad(magnet, leaf)
        surrogate = (feats * grad.to(feats.dtype)).sum()   # d surrogate / d theta = d magnet / d theta
        total = magnet.item()
        if qtrades is not None and qtrades["lambda"] > 0:
            q = qtrades_term(net, x, feats, ids, classes, eps=qtrades["eps"], step=qtrades["step"],
                             generator=dev_gen)
            surrogate = surrogate + qtrades["lambda"] * q
            sums["qtrades_loss"] += q.item()
            total += qtrades["lambda"] * q.item()
        optimizer.zero_grad(set_to_none=True)
        surrogate.backward()
        optimizer.step()
        sampler.update_losses(batch.indices, losses.detach())
        sums["magnet_loss"] += magnet.item()
        sums["train_loss"] += total
        bar.set_postfix(loss=f"{total:.4f}", refresh=False)
    out = {key: v / max(steps, 1) for key, v in sums.items()}
    if qtrades is None:
        del out["qtrades_loss"]
    return {**out, "steps": steps, "planned_steps": planned}
