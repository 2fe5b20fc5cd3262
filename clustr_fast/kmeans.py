"""The per-group (per-class) k-means refresh of ClusTR, and the Lloyd pieces of ``KMeans``.

- ``kmeans_per_group``: every group is its own k-means problem and stops on its own
  (scikit-learn's rule with the group's own variance), exactly as a loop of per-class
  fits. On the CPU one call runs every group to convergence, group after group while its
  rows sit in cache; on other devices each iteration is one assignment and one update
  launch for all groups, and a group that has stopped keeps its centers.
- ``lloyd_step``: the (weighted) Lloyd step of :class:`clustr_fast.KMeans`
  (:mod:`clustr_fast.estimator`) on the fused ops.
"""
from __future__ import annotations

import torch

from ._validate import (HIGHEST, acc_dtype, check_finite, check_float, check_ids, check_int, check_matrix, check_real,
                        local_trials, precision_code)
from .ops.kmeans import (kmeans_assign_op, kmeans_fit_groups_op, kmeans_lloyd_groups_op,
                         kmeans_lloyd_step_op, kmeans_update_op, lloyd_groups_runs_here,
                         lloyd_groups_stepwise, lloyd_step_runs_here, plusplus_draws, plusplus_segments)


def tolerance(x: torch.Tensor, tol: float) -> float:
    """scikit-learn's absolute tolerance: ``tol`` times the mean per-feature variance of ``x``."""
    if x.shape[0] < 2 or tol == 0:
        return 0.0
    return float(x.var(0, unbiased=False).mean()) * tol


def lloyd_step(x, centers, weights=None, precision=HIGHEST):
    """One Lloyd step of ``clustr_fast.KMeans``: assign to ``centers``, then the (weighted) means.

        labels_i = argmin_j ||x_i - c_j||^2,   c'_j = sum_{labels_i = j} w_i x_i / W_j,   W_j = sum_{labels_i = j} w_i

    Returns ``(labels int64 [N], sqdist [N], new_centers [K,d], W [K])``; a cluster with W_j = 0
    keeps its center. ``W`` is the int64 count of each cluster without weights, else the weight
    sums (accumulation dtype). On the CPU one fused pass over x, elsewhere assign + update.
    """
    if lloyd_step_runs_here(x.device):
        return kmeans_lloyd_step_op(x, centers, precision=precision, groups=None, group_k=0, weights=weights)
    labels, sq = kmeans_assign_op(x, centers, precision=precision, groups=None, group_k=0)
    new, counts = kmeans_update_op(x, labels, centers.shape[0], prev_centers=centers,
                                   deterministic=torch.are_deterministic_algorithms_enabled(), weights=weights)
    return labels, sq, new, counts


def kmeans_per_group(x, groups, k, *, max_iter=20, tol=1e-4, generator=None, n_local_trials=None,
                     precision="highest", n_init=1):
    """k clusters in each group (class) of ``x [N,d]``, every group in the same launches.

    ``groups [N]`` holds group ids in ``[0, G)``; every group needs at least ``k`` rows. Rows are
    sorted by group once; seeding runs greedy k-means++ in every group per step. Each group then
    runs at most ``max_iter`` Lloyd iterations and stops on its own, when none of its labels changes
    or its squared center shift is at most ``tol * mean(var(x_g, 0))`` (scikit-learn's rule per
    group: the result is that of a per-class loop of fits). CPU: one call, group after group in
    cache, one thread per group. Other devices: one assignment (row i only sees its group's
    centers) and one update launch per iteration for all groups (CUDA: that loop runs inside
    the extension; Triton: from Python).

    ``n_init``: seedings per group; each group keeps the one whose fit has the lowest inertia (the
    first on ties), as scikit-learn's ``n_init``. The seedings are drawn one after the other, each as
    a call with ``n_init=1`` would draw it, and fitted together as ``n_init`` copies of every group in
    the same launches (memory: ``n_init`` copies of ``x``). ``n_init=1`` is exactly the single fit.

    Returns ``(labels int64 [N] = group * k + j, centers [G*k, d])`` with the centers of group g in
    rows ``[g*k, (g+1)*k)`` (accumulation dtype: float32 for half inputs).
    """
    op = "kmeans_per_group"
    check_matrix(x, "x", op=op)
    check_float(x, "x", op=op)
    groups = torch.as_tensor(groups, device=x.device)
    check_ids(groups, "groups", None, n=x.shape[0], op=op)
    k = check_int(k, "k", low=1, op=op)
    max_iter = check_int(max_iter, "max_iter", low=0, op=op)
    tol = check_real(tol, "tol", op=op)
    n_init = check_int(n_init, "n_init", low=1, op=op)
    check_finite(x, "x", op=op)
    if x.shape[0] == 0:
        raise ValueError(f"{op}: `x` has no rows")
    if int(groups.min()) < 0:
        raise ValueError(f"{op}: `groups` must be >= 0, got min {int(groups.min())}")
    groups = groups.long()
    sizes = torch.bincount(groups)
    small = (sizes < k).nonzero()
    if small.numel():
        g = int(small[0, 0])
        raise ValueError(f"{op}: group {g} has {int(sizes[g])} rows, fewer than `k`={k}")
    in_order = bool((groups[1:] >= groups[:-1]).all())  # rows already sorted by group: no copy
    order = None if in_order else torch.argsort(groups, stable=True)
    xs = (x.detach() if in_order else x.detach()[order]).to(acc_dtype(x.dtype)).contiguous()
    offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    prec = precision_code(precision)
    # n_init > 1: copy c of group g is group c*G + g of one fit over n_init copies of the rows.
    shifts = [c * xs.shape[0] for c in range(n_init)]
    xr = xs if n_init == 1 else xs.repeat(n_init, 1)
    offsets_r = offsets if n_init == 1 else torch.cat([offsets[:-1] + s for s in shifts] + [offsets[-1:] + shifts[-1]])
    if lloyd_step_runs_here(xs.device):  # seeding and iterations of each group in one pass over it
        seeds = [plusplus_draws(sizes, k, local_trials(k, n_local_trials), generator, xs.device) for _ in shifts]
        first = torch.cat([f for f, _ in seeds]) if n_init > 1 else seeds[0][0]
        draws = torch.cat([d for _, d in seeds], dim=1) if n_init > 1 else seeds[0][1]
        lab_sorted, sq, centers, _ = kmeans_fit_groups_op(xr, offsets_r, k, first + offsets_r[:-1], draws,
                                                          max_iter=max_iter, tol=tol, precision=prec)
    else:
        idx = torch.cat([plusplus_segments(xs, offsets, k, generator=generator, n_local_trials=n_local_trials) + s
                         for s in shifts])
        if lloyd_groups_runs_here(xs.device):  # CUDA: the Lloyd loop inside the extension
            lab_sorted, sq, centers, _ = kmeans_lloyd_groups_op(xr, offsets_r, xr[idx.reshape(-1)], max_iter=max_iter,
                                                                tol=tol, precision=prec)
        else:
            lab_sorted, sq, centers, _ = lloyd_groups_stepwise(
                xr, offsets_r, xr[idx.reshape(-1)], max_iter, tol, prec, kmeans_assign_op, kmeans_update_op,
                deterministic=torch.are_deterministic_algorithms_enabled())
    if n_init > 1:
        lab_sorted, centers = _best_copies(lab_sorted, sq, centers, sizes, n_init, k)
    if in_order:
        return lab_sorted, centers
    labels = torch.empty_like(lab_sorted)
    labels[order] = lab_sorted
    return labels, centers


def _best_copies(labels, sq, centers, sizes, n_init, k):
    """Of the ``n_init`` fitted copies of every group, the one with the lowest inertia (float64 sum of
    its rows' squared distances; the first copy on ties): ``(labels [N], centers [G*k, d])``."""
    g = sizes.numel()
    n = labels.shape[0] // n_init
    dev = labels.device
    copy_of_row = torch.repeat_interleave(torch.arange(n_init * g, device=dev), sizes.repeat(n_init))
    inertia = torch.zeros(n_init * g, dtype=torch.float64, device=dev).index_add_(0, copy_of_row, sq.to(torch.float64))
    best = inertia.view(n_init, g).argmin(0)                                  # [G], first minimum on ties
    centers = centers.view(n_init, g, k, -1)[best, torch.arange(g, device=dev)].reshape(g * k, -1)
    pick = best[torch.repeat_interleave(torch.arange(g, device=dev), sizes)]  # chosen copy of each row
    labels = labels.view(n_init, n)[pick, torch.arange(n, device=dev)] - pick * (g * k)
    return labels, centers
