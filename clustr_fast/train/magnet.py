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
from .certified_margin import certified_margin_batch
from .distributed import gather_losses, global_sum, sharded_refresh
from .qtrades import qtrades_term
from .refresh import cluster, embed


def refresh(net, train, sampler, *, k, iters, alpha, device, generator, timer, world=None, n_init=1):
    """Embed ``train``, cluster it per class, measure the full-set loss, hand the clusters to
    ``sampler``; returns the Clustering (with ``.loss``). ``world`` with several ranks: each
    embeds its share and the clusters are those of every rank's rows (``sharded_refresh``)."""
    if world is not None and world.sharded:
        clustering = sharded_refresh(net, train, k=k, iters=iters, alpha=alpha, device=device,
                                     generator=generator, timer=timer, world=world, n_init=n_init)
        sampler.set_clusters(clustering.assign, clustering.centers, clustering.center_classes)
        return clustering
    with timer("embed"):
        feats = embed(net, train.x, device)
    with timer("kmeans"):
        clustering = cluster(feats, train.y.to(device), k, iters, generator, n_init=n_init)
    with timer("monitor"):
        clustering.loss = full_magnet_loss(feats, clustering, alpha)
    sampler.set_clusters(clustering.assign, clustering.centers, clustering.center_classes)
    return clustering


def global_variance_scaled(feats, ids, num_clusters, world):
    """``feats / sigma`` with ``sigma^2 = sum_r S_r / (sum_r B_r - 1)`` over every rank's batch
    (``S_r``: squared distances of rank r's rows to their batch cluster means), differentiable
    through the sum over the ranks. The Magnet loss depends on sigma^2 only through
    ``d / (2 sigma^2)``, so the loss of the scaled features with sigma^2 = 1 is the loss with
    the global sigma^2, and its gradient flows through sigma^2 to every rank's features."""
    centers, _ = clustr_fast.cluster_means(feats, ids, num_clusters)
    own = (feats - centers[ids]).pow(2).sum().reshape(1)
    count = torch.tensor([float(feats.shape[0])], dtype=own.dtype, device=own.device)
    total = global_sum(torch.cat([own, count]), world)
    variance = total[0] / (total[1].detach() - 1)
    return feats / variance.sqrt()


@torch.no_grad()
def full_magnet_loss(feats, clustering, alpha) -> float:
    """The Magnet loss of the whole training set against its refreshed centers and sigma^2:
    a deterministic measure of how well the features cluster (the batch loss is biased by
    the sampler, which seeks hard clusters)."""
    return float(clustr_fast.magnet_loss(feats, clustering.centers, clustering.assign, clustering.center_classes,
                                         alpha=alpha, variance=clustering.variance))


def magnet_epoch(net, optimizer, train, sampler, *, alpha, device, cpu_gen, dev_gen, timer,
                 augment=False, qtrades=None, max_steps=None, progress=False, desc="magnet",
                 world=None, batch_variance="local", margin=None):
    """``planned = ceil(N / (m d))`` steps (one epoch passes as many examples as the set has),
    capped by ``max_steps``. ``qtrades``: None or ``{"lambda", "eps", "step"}`` and, for p(.)
    against the last refresh (``qtrades_term``), ``"centers": "global"``, ``"clustering"``,
    ``"num_classes"``, ``"top_d"``.
    ``margin``: None or ``{"weight", "radius", "lipschitz"}``, the certified-margin term on the
    batch's cluster means (``certified_margin_batch``) added to the Magnet loss.
    Returns ``{"train_loss", "magnet_loss", "qtrades_loss", "margin_loss", "steps", "planned_steps"}``
    (``qtrades_loss``, ``margin_loss`` with their terms only).

    ``world`` with several ranks: each rank takes ``ceil(N / (m d size))`` steps on its own
    batches, and every rank's sampler records every rank's losses. ``batch_variance``:
    "local" (sigma^2 of this rank's batch) or "global" (of the union of the ranks' batches,
    differentiable through an all_reduce)."""
    net.train()
    size = world.size if world is not None else 1
    planned = math.ceil(len(train) / (sampler.m * sampler.d * size))
    steps = planned if max_steps is None else min(planned, max_steps)
    sums = {"train_loss": 0.0, "magnet_loss": 0.0, "qtrades_loss": 0.0, "margin_loss": 0.0}
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
            if batch_variance == "global" and size > 1:
                losses = clustr_fast.magnet_loss_batch(global_variance_scaled(leaf, ids, classes.shape[0], world),
                                                       ids, classes, alpha=alpha, variance=1.0, reduction="none")
            else:
                losses = clustr_fast.magnet_loss_batch(leaf, ids, classes, alpha=alpha, reduction="none")
            magnet = losses.mean()
            objective = magnet
            if margin is not None:
                cm = certified_margin_batch(leaf, ids, classes, lipschitz=margin["lipschitz"], radius=margin["radius"])
                objective = magnet + margin["weight"] * cm
                sums["margin_loss"] += cm.item()
            grad, = torch.autograd.grad(objective, leaf)
        surrogate = (feats * grad.to(feats.dtype)).sum()   # d surrogate / d theta = d objective / d theta
        total = objective.item()
        if qtrades is not None and qtrades["lambda"] > 0:
            q = qtrades_term(net, x, feats, ids, classes, eps=qtrades["eps"], step=qtrades["step"],
                             generator=dev_gen, centers=qtrades.get("centers", "batch"),
                             clustering=qtrades.get("clustering"), num_classes=qtrades.get("num_classes"),
                             top_d=qtrades.get("top_d"))
            surrogate = surrogate + qtrades["lambda"] * q
            sums["qtrades_loss"] += q.item()
            total += qtrades["lambda"] * q.item()
        optimizer.zero_grad(set_to_none=True)
        surrogate.backward()
        optimizer.step()
        if size > 1:
            sampler.update_losses(*gather_losses(batch.indices, losses, sampler.m * sampler.d, world))
        else:
            sampler.update_losses(batch.indices, losses.detach())
        sums["magnet_loss"] += magnet.item()
        sums["train_loss"] += total
        bar.set_postfix(loss=f"{total:.4f}", refresh=False)
    out = {key: v / max(steps, 1) for key, v in sums.items()}
    if qtrades is None:
        del out["qtrades_loss"]
    if margin is None:
        del out["margin_loss"]
    return {**out, "steps": steps, "planned_steps": planned}
