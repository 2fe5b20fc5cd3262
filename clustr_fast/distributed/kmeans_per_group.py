"""ClusTR's per-class k-means refresh over the rows of every rank.

Every group (class) g is its own k-means problem on the rows of g of all ranks together: greedy
k-means++ seeding in every group at once (:mod:`._plusplus`, the draws of
:func:`clustr_fast.kmeans_per_group`), then Lloyd's iterations in which every group shares the
same collectives: ONE ``all_reduce`` per iteration of ``[sums G*k*d, counts G*k, shift G,
changed G]`` (float64, ``8 (G k d + G k + 2 G)`` bytes), and each group stops on its own from
reduced values only, by the single-process rule.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._validate import acc_dtype, check_ids, check_int, check_real, local_trials
from ..kmeans import kmeans_per_group as _kmeans_per_group_single
from ._comm import Comm, Packed, agree, checked, dtype_code, resolve
from ._plusplus import greedy_plusplus
from .kmeans import _blank, check_points, global_tolerance, local_step, shared_draws

__all__ = ["kmeans_per_group"]


def lloyd_groups(comm: Comm, xs: Tensor, gid: Tensor, centers: Tensor, k: int, G: int, max_iter: int, tol: list):
    """Lloyd's iterations of every group over all ranks from ``centers [G*k, d]`` (the same on every rank).

    The rule of :func:`clustr_fast.ops.kmeans.lloyd_groups_stepwise`: iteration ``it`` updates
    the centers of the active groups (an empty cluster keeps its center), reassigns, and a group
    stops when none of its labels changed (over all ranks) or its squared center shift is at most
    ``tol[g]``. The shifts are rank 0's (the others add 0) and the label changes are reduced, so
    every rank stops every group at the same iteration. Returns ``(labels [n] = g*k + j, centers)``.
    """
    K, d = centers.shape
    n, dev = xs.shape[0], xs.device
    pk = Packed([(K, d), (K,), (G,), (G,)], dev)
    sums, counts, shift, changed = pk.views
    tol_g = torch.tensor(tol, dtype=torch.float64)

    def step(c, it, old=None, shifts=None):
        pk.zero_()
        if n:
            labels = local_step(xs, c, gid, k, sums, counts)
            if old is not None:
                changed.index_add_(0, gid, (labels != old).to(torch.float64))
        else:
            labels = torch.empty(0, dtype=torch.int64, device=dev)
        if shifts is not None and comm.rank == 0:
            shift.copy_(shifts)
        comm.all_reduce_(pk.buf, f"the per-group Lloyd sums (iteration {it})")
        return labels

    labels = step(centers, 0)
    active = torch.ones(G, dtype=torch.bool)
    for it in range(1, max_iter + 1):
        keep = active.repeat_interleave(k).to(dev)[:, None] & (counts > 0)[:, None]
        new = torch.where(keep, sums / counts.clamp(min=1)[:, None], centers.to(torch.float64)).to(centers.dtype)
        shifts = None
        if comm.rank == 0:
            shifts = (new.to(torch.float64) - centers.to(torch.float64)).square().sum(1).view(G, k).sum(1)
        centers = new
        labels = step(centers, it, labels, shifts)
        active &= (changed.cpu() > 0) & (shift.cpu() > tol_g)
        if not bool(active.any()):
            break
    return labels, centers


def kmeans_per_group(x: Tensor, groups: Tensor, k: int, *, max_iter: int = 20, tol: float = 1e-4, seed: int = 0,
                     generator: Optional[torch.Generator] = None, n_local_trials: Optional[int] = None,
                     num_groups: Optional[int] = None, group=None):
    """k clusters in every group (class) over the union of every rank's rows: ClusTR's refresh.

    ``x [n_r, d]`` and ``groups [n_r]`` (ids in ``[0, G)``) are this rank's rows. ``G`` is
    ``num_groups`` (the same on every rank) or, when None, one more than the largest id on any
    rank; every group needs at least ``k`` rows over all ranks together. Seeding: greedy
    k-means++ in every group with the draws of :func:`clustr_fast.kmeans_per_group` (group rank
    0's ``generator``, else a generator on ``x``'s device seeded with ``seed``). Then at most
    ``max_iter`` Lloyd iterations, one packed ``all_reduce`` each for all groups; a group stops
    when none of its labels changes or its squared center shift is at most
    ``tol * mean(var(x_g, 0))`` (its rows over all ranks). The groups of the rank-ordered
    concatenation, seeded alike, give the same result in one process; with one process (or a
    group of one rank) this is exactly :func:`clustr_fast.kmeans_per_group`.

    Returns ``(labels int64 [n_r] = group * k + j`` of this rank's rows, ``centers [G*k, d]``:
    group g's centers in rows ``[g*k, (g+1)*k)``, accumulation dtype, the same on every rank).
    """
    op = "distributed.kmeans_per_group"
    comm = resolve(group, op)
    state = {}

    def local():
        check_points(x, op)
        ids = torch.as_tensor(groups, device=x.device)
        check_ids(ids, "groups", None, n=x.shape[0], op=op)
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError(f"{op}: `groups` must be >= 0, got min {int(ids.min())}")
        kk = check_int(k, "k", low=1, op=op)
        iters = check_int(max_iter, "max_iter", low=0, op=op)
        t = check_real(tol, "tol", op=op)
        if t < 0:
            raise ValueError(f"{op}: `tol` must be >= 0, got {t}")
        check_int(seed, "seed", op=op)
        trials = local_trials(kk, n_local_trials, op=op)
        g_here = int(ids.max()) + 1 if ids.numel() else 0
        if num_groups is not None:
            ng = check_int(num_groups, "num_groups", low=1, op=op)
            if g_here > ng:
                raise ValueError(f"{op}: `groups` holds id {g_here - 1}, not below `num_groups`={ng}")
        state["ids"] = ids.long()
        return [("x.shape[1]", x.shape[1], True), ("x.dtype", dtype_code(x.dtype), True), ("k", kk, True),
                ("max_iter", iters, True), ("tol", t, True), ("n_local_trials", trials, True),
                ("num_groups", float("nan") if num_groups is None else num_groups, True),
                ("rows", x.shape[0], False), ("groups here", g_here, False)]

    gen = generator
    if gen is None:
        gen = torch.Generator(device=x.device if isinstance(x, Tensor) else "cpu").manual_seed(int(seed))
    if comm is None:
        local()
        ids = state["ids"]
        if num_groups is not None:  # the single-process function sees only the ids present
            sizes = torch.bincount(ids, minlength=int(num_groups))
            small = (sizes < int(k)).nonzero()
            if small.numel():
                g = int(small[0, 0])
                raise ValueError(f"kmeans_per_group: group {g} has {int(sizes[g])} rows, fewer than `k`={k}")
        return _kmeans_per_group_single(x, ids, k, max_iter=max_iter, tol=tol, generator=gen,
                                        n_local_trials=n_local_trials)
    fields, err = checked(local)
    table = agree(comm, fields or _blank(9), err)
    k, max_iter, tol = int(k), int(max_iter), float(tol)
    trials = int(table[0, 5])
    G = int(num_groups) if num_groups is not None else int(table[:, 8].max())
    if G == 0:
        raise ValueError(f"{op}: `x` has no rows on any rank")
    ids = state["ids"]
    dev = x.device
    here = torch.bincount(ids, minlength=G) if ids.numel() else torch.zeros(G, dtype=torch.int64, device=dev)
    counts = comm.all_gather(here, "the rows per group").cpu()                       # [p, G]
    sizes = counts.sum(0)
    small = (sizes < k).nonzero()
    if small.numel():
        g = int(small[0, 0])
        raise ValueError(f"{op}: group {g} has {int(sizes[g])} rows over all ranks, fewer than `k`={k}")
    order = torch.argsort(ids, stable=True)
    xs = x.detach()[order].to(acc_dtype(x.dtype)).contiguous()
    gid = ids[order]
    local_off = [0] + here.cumsum(0).tolist()
    first, draws = shared_draws(comm, sizes, k, trials, gen, dev)
    centers = greedy_plusplus(comm, xs, gid, local_off, counts, k, first, draws)[0].reshape(G * k, -1)
    tol_g = global_tolerance(comm, xs, gid, G, sizes.tolist(), tol)
    lab_sorted, centers = lloyd_groups(comm, xs, gid, centers, k, G, max_iter, tol_g)
    labels = torch.empty_like(lab_sorted)
    labels[order] = lab_sorted
    return labels, centers
