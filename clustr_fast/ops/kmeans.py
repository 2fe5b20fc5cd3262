"""k-means ops: ``kmeans_assign``, ``kmeans_update``, ``kmeans_lloyd_step``, ``kmeans_plusplus``.

    assign:     labels[i] = argmin_k ||x_i - c_k||^2 (first minimum), sqdist[i] = that minimum
    update:     centers[j] = sum_{labels_i = j} w_i x_i / W_j, W_j = sum_{labels_i = j} w_i (w = 1 without
                sample weights; prev_centers[j], else 0, when W_j = 0), counts[j] (W_j with weights)
    lloyd step: assign, then update with prev_centers = centers, in one pass over x (CPU and
                reference only; on other backends :func:`lloyd_step_runs_here` is False and the
                caller runs assign + update)
    k-means++:  greedy D^2 seeding (scikit-learn's), in every segment of x at once; with sample
                weights the candidates are drawn by w_i D_i^2 and the potential is sum_i w_i D_i^2
    lloyd groups: Lloyd's algorithm to convergence in every segment of x, each segment stopping
                on its own (CPU: segment after segment in cache; CUDA: the stepwise loop in the
                extension; Triton: one assign and one update launch per iteration for all
                segments from Python, see :func:`lloyd_groups_stepwise`)

Not differentiable (no autograd is registered). Each op also takes the
segment/group arguments that :func:`clustr_fast.kmeans_per_group` uses to run
every group in one launch per step. Random numbers of k-means++ are drawn here,
from the caller's ``torch.Generator`` or, as scikit-learn draws them, from a numpy
``RandomState`` (``random_state``), and handed to the kernels, so a seed fixes the
result on a given backend.
"""
from __future__ import annotations

import numbers
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import _backend
from .._validate import (acc_dtype, check_ids, check_kmeans_assign, check_kmeans_plusplus, check_kmeans_update,
                         check_sample_weight, local_trials, precision_code, precision_name)
from ..reference import kmeans as _ref
from ._library import define, triton_kernel

# --------------------------------------------------------------------------- reference backend


def _reference_assign(x, centers, precision, groups, group_k):
    if groups is None:
        return _ref.kmeans_assign(x, centers, precision=precision_name(precision))
    acc = acc_dtype(x.dtype)
    xa, ca = x.to(acc), centers.to(acc)
    base = groups.long() * group_k
    dist = torch.stack([(xa - ca[base + j]).square().sum(1) for j in range(group_k)], 1)
    j = dist.argmin(1)
    return base + j, dist.gather(1, j[:, None])[:, 0]


def _reference_update(x, labels, k, prev_centers, deterministic, weights=None):
    return _ref.kmeans_update(x, labels, k, prev_centers=prev_centers, sample_weight=weights)


def _reference_lloyd_step(x, centers, precision, groups, group_k, weights=None):
    """The composition that the fused step replaces: assign, then update keeping empty clusters."""
    labels, sq = _reference_assign(x, centers, precision, groups, group_k)
    new_centers, counts = _reference_update(x, labels, centers.shape[0], centers, True, weights)
    return labels, sq, new_centers, counts


def group_tolerances(x: Tensor, offsets: Tensor, tol: float) -> Tensor:
    """scikit-learn's absolute tolerance of every segment: ``tol * mean_f var(x_g[:, f])`` (float64 [G]).

    Two passes of segment sums (means, then centered squares) for all segments at once: a fixed
    number of launches whatever the number of segments. 0 for segments of fewer than 2 rows.
    """
    sizes = offsets.diff().to(x.device)
    g = sizes.numel()
    if tol <= 0:
        return torch.zeros(g, dtype=torch.float64, device=x.device)
    groups = torch.repeat_interleave(torch.arange(g, device=x.device), sizes)
    xa = x.to(acc_dtype(x.dtype))
    n = sizes.clamp(min=1).to(xa.dtype)[:, None]
    mean = xa.new_zeros((g, xa.shape[1])).index_add_(0, groups, xa) / n
    var = xa.new_zeros((g, xa.shape[1])).index_add_(0, groups, (xa - mean[groups]).square_()) / n
    return torch.where(sizes >= 2, var.mean(1).to(torch.float64) * tol, 0.0)


def lloyd_groups_stepwise(x, offsets, centers, max_iter, tol, precision, assign, update, deterministic=True,
                          sync_every=None):
    """Lloyd's algorithm in every segment with one ``assign`` and one ``update`` call per iteration
    for all segments; a segment that has stopped keeps its centers (so its labels stay put).

    Same result as running each segment alone: iteration ``it`` updates the centers of the active
    segments, reassigns, and a segment stops when none of its labels changed or its center shift is
    at most its tolerance (:func:`group_tolerances`). The host reads "any segment active" every
    ``sync_every`` iterations (default: every iteration on the CPU, ``LLOYD_SYNC_EVERY`` elsewhere;
    one sync each): an iteration after every segment has stopped changes nothing, so the result is
    the same.
    Returns ``(labels, sqdist, centers, n_iter int64 [G])``.
    """
    G = offsets.numel() - 1
    k = centers.shape[0] // G
    sizes = offsets.diff().to(x.device)
    groups = torch.repeat_interleave(torch.arange(G, device=x.device), sizes)
    tol_g = group_tolerances(x, offsets, float(tol))
    labels, d = assign(x, centers, precision=precision, groups=groups, group_k=k)
    n_iter = torch.zeros(G, dtype=torch.int64, device=x.device)
    active = torch.ones(G, dtype=torch.bool, device=x.device)
    if sync_every is None:
        sync_every = 1 if x.device.type == "cpu" else LLOYD_SYNC_EVERY
    for it in range(max_iter):
        new_centers, _ = update(x, labels, G * k, prev_centers=centers, deterministic=deterministic)
        new_centers = torch.where(active.repeat_interleave(k)[:, None], new_centers, centers)
        shift = (new_centers.to(torch.float64) - centers.to(torch.float64)).square().sum(1).view(G, k).sum(1)
        centers = new_centers
        n_iter += active.long()
        new_labels, d = assign(x, centers, precision=precision, groups=groups, group_k=k)
        changed = torch.zeros(G, dtype=torch.int64, device=x.device).index_add_(0, groups, (new_labels != labels).long())
        labels = new_labels
        active &= (changed > 0) & (shift > tol_g)
        if (it + 1) % sync_every == 0 and not bool(active.any()):
            break
    return labels, d, centers, n_iter


# Iterations between two host reads of "any segment still active" in the Lloyd loops over
# segments on a GPU (here and kLloydSyncEvery in csrc/cuda/kmeans_lloyd_groups.cu). Each read waits for the
# GPU; between reads the host queues the next iterations' launches while the GPU runs. At most
# LLOYD_SYNC_EVERY - 1 iterations run after the last segment stops, and change nothing.
LLOYD_SYNC_EVERY = 4


def _reference_lloyd_groups(x, offsets, centers, max_iter, tol, precision):
    return lloyd_groups_stepwise(x.to(acc_dtype(x.dtype)), offsets, centers.to(acc_dtype(x.dtype)).clone(), max_iter,
                                 tol, precision, _reference_assign, _reference_update)


def _reference_plusplus(x, offsets, k, first, draws, weights=None):
    """The reference algorithm of ``reference.kmeans_plusplus``, one segment at a time, on given draws."""
    acc = acc_dtype(x.dtype)
    xa = x.detach().to(acc)
    off = offsets.tolist()
    out = torch.empty((len(off) - 1, k), dtype=torch.int64, device=x.device)
    for g in range(len(off) - 1):
        seg = xa[off[g]:off[g + 1]]
        wg = None if weights is None else weights[off[g]:off[g + 1]].to(acc)
        f = int(first[g]) - off[g]
        chosen = torch.zeros(seg.shape[0], dtype=torch.bool, device=x.device)
        chosen[f] = True
        idx = [f]
        closest = (seg - seg[f]).square().sum(1)
        for s in range(1, k):
            wd = closest if wg is None else wg * closest
            pot = wd.to(torch.float64).sum()
            free = ~chosen if wg is None else ~chosen & (wg > 0)
            cand = _ref._sample(wd if pot > 0 else free.to(acc), draws[s - 1, g])
            dc = torch.stack([torch.minimum((seg - seg[c]).square().sum(1), closest) for c in cand.tolist()])
            pots = dc.to(torch.float64) if wg is None else dc.to(torch.float64) * wg.to(torch.float64)
            b = int(pots.sum(1).argmin())
            closest = dc[b]
            idx.append(int(cand[b]))
            chosen[idx[-1]] = True
        out[g] = torch.tensor(idx, dtype=torch.int64, device=x.device) + off[g]
    return out


# --------------------------------------------------------------------------- ops


def _reference_fit_groups(x, offsets, k, first, draws, max_iter, tol, precision):
    idx = _reference_plusplus(x, offsets, k, first, draws)
    centers = x.detach().to(acc_dtype(x.dtype))[idx.reshape(-1)]
    return _reference_lloyd_groups(x, offsets, centers, max_iter, tol, precision)


def _counts_dtype(x, weights):
    """The dtype of the second output of the update: int64 counts, or the weight sums (accumulation dtype)."""
    return torch.int64 if weights is None else acc_dtype(x.dtype)


def _assign_outputs(fn):
    def call(x, centers, precision, groups, group_k):
        labels, sq = fn(x, centers, precision, groups, group_k)
        return labels, sq.to(acc_dtype(x.dtype))
    return call


def _update_outputs(fn):
    def call(x, labels, k, prev_centers, deterministic, weights=None):
        centers, counts = fn(x, labels, k, prev_centers, deterministic, weights)
        return centers.to(acc_dtype(x.dtype)), counts.to(_counts_dtype(x, weights))
    return call


def _loop_outputs(fn):
    def call(x, *args):
        labels, sq, centers, last = fn(x, *args)
        acc = acc_dtype(x.dtype)
        return labels, sq.to(acc), centers.to(acc), last
    return call


def _check_rows(x, name):
    torch._check(x.dim() == 2, lambda: f"{name}: x must be [N, d]")


def _fake_assign(x, centers, precision, groups, group_k):
    _check_rows(x, "kmeans_assign")
    torch._check(centers.dim() == 2 and centers.shape[1] == x.shape[1],
                 lambda: "kmeans_assign: centers must be [K, d] with the d of x")
    n = x.shape[0]
    return x.new_empty((n,), dtype=torch.int64), x.new_empty((n,), dtype=acc_dtype(x.dtype))


def _fake_update(x, labels, k, prev_centers, deterministic, weights=None):
    _check_rows(x, "kmeans_update")
    torch._check(labels.shape[0] == x.shape[0], lambda: "kmeans_update: labels must be [N]")
    return (x.new_empty((k, x.shape[1]), dtype=acc_dtype(x.dtype)),
            x.new_empty((k,), dtype=_counts_dtype(x, weights)))


def _fake_lloyd_step(x, centers, precision, groups, group_k, weights=None):
    _check_rows(x, "kmeans_lloyd_step")
    n, acc = x.shape[0], acc_dtype(x.dtype)
    return (x.new_empty((n,), dtype=torch.int64), x.new_empty((n,), dtype=acc),
            x.new_empty(tuple(centers.shape), dtype=acc),
            x.new_empty((centers.shape[0],), dtype=_counts_dtype(x, weights)))


def _fake_lloyd_groups(x, offsets, centers, max_iter, tol, precision):
    _check_rows(x, "kmeans_lloyd_groups")
    n, acc = x.shape[0], acc_dtype(x.dtype)
    return (x.new_empty((n,), dtype=torch.int64), x.new_empty((n,), dtype=acc),
            x.new_empty(tuple(centers.shape), dtype=acc), x.new_empty((offsets.shape[0] - 1,), dtype=torch.int64))


def _fake_fit_groups(x, offsets, k, first, draws, max_iter, tol, precision):
    _check_rows(x, "kmeans_fit_groups")
    n, g, acc = x.shape[0], offsets.shape[0] - 1, acc_dtype(x.dtype)
    return (x.new_empty((n,), dtype=torch.int64), x.new_empty((n,), dtype=acc),
            x.new_empty((g * k, x.shape[1]), dtype=acc), x.new_empty((g,), dtype=torch.int64))


def _fake_plusplus(x, offsets, k, first, draws, weights=None):
    _check_rows(x, "kmeans_plusplus")
    return x.new_empty((offsets.shape[0] - 1, k), dtype=torch.int64)


# labels[i] = argmin_k ||x_i - c_k||^2 (first minimum), sqdist[i] = that minimum (accumulation dtype).
# With groups: row i only sees centers [groups[i]*group_k, (groups[i]+1)*group_k).
kmeans_assign_op = define(
    "kmeans_assign(Tensor x, Tensor centers, int precision, Tensor? groups, int group_k) -> (Tensor, Tensor)",
    _fake_assign, reference=_assign_outputs(_reference_assign), triton=_assign_outputs(triton_kernel("kmeans", "kmeans_assign")))
# centers[j] = sum_{labels_i = j} w_i x_i / W_j (prev_centers[j], else 0, when W_j = 0), and counts
# int64 [k] (without weights) or W [k] (accumulation dtype).
kmeans_update_op = define(
    "kmeans_update(Tensor x, Tensor labels, int k, Tensor? prev_centers, bool deterministic, "
    "Tensor? weights=None) -> (Tensor, Tensor)",
    _fake_update, reference=_update_outputs(_reference_update), triton=_update_outputs(triton_kernel("kmeans", "kmeans_update")))
# One Lloyd step in one pass: kmeans_assign, then kmeans_update with prev_centers = centers.
kmeans_lloyd_step_op = define(
    "kmeans_lloyd_step(Tensor x, Tensor centers, int precision, Tensor? groups, int group_k, "
    "Tensor? weights=None) -> (Tensor, Tensor, Tensor, Tensor)",
    _fake_lloyd_step, reference=_loop_outputs(_reference_lloyd_step))
# Lloyd to convergence in every segment [offsets[g], offsets[g+1]) from the centers [g*k, (g+1)*k),
# each segment stopping on its own. -> (labels = g*k + j, sqdist, centers [G*k, d], n_iter int64 [G]).
kmeans_lloyd_groups_op = define(
    "kmeans_lloyd_groups(Tensor x, Tensor offsets, Tensor centers, int max_iter, float tol, int precision) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _fake_lloyd_groups, reference=_loop_outputs(_reference_lloyd_groups))
# Greedy k-means++ (kmeans_plusplus on the same draws), then kmeans_lloyd_groups, in every segment; on
# the CPU each segment is seeded and iterated while it sits in cache.
kmeans_fit_groups_op = define(
    "kmeans_fit_groups(Tensor x, Tensor offsets, int k, Tensor first, Tensor draws, int max_iter, float tol, "
    "int precision) -> (Tensor, Tensor, Tensor, Tensor)",
    _fake_fit_groups, reference=_loop_outputs(_reference_fit_groups))
# Greedy k-means++ in every segment: first[g] the first row, draws [k-1, G, T] the uniforms of the T
# local trials of each later step; with weights the candidates are drawn by w_i D_i^2. -> int64 [G, k].
kmeans_plusplus_op = define(
    "kmeans_plusplus(Tensor x, Tensor offsets, int k, Tensor first, Tensor draws, Tensor? weights=None) -> Tensor",
    _fake_plusplus, reference=_reference_plusplus, triton=("kmeans", "kmeans_plusplus"))


def lloyd_step_runs_here(device: torch.device) -> bool:
    """True when the fused step runs on ``device`` under the current choice (``_backend.TABLE``)."""
    return _backend.runs("kmeans_lloyd_step", device)


def lloyd_groups_runs_here(device: torch.device) -> bool:
    """True when ``kmeans_lloyd_groups_op`` runs on ``device`` under the current choice: the CPU, and
    CUDA tensors under "auto" or "cuda" (the Lloyd loop in the extension: a few launches and one
    4-byte read per iteration). Elsewhere (Triton) :func:`lloyd_groups_stepwise` runs in Python."""
    return _backend.runs("kmeans_lloyd_groups", device)


# --------------------------------------------------------------------------- public functions


def plusplus_draws(sizes: Tensor, k: int, trials: int, generator, device, weights: Optional[Tensor] = None):
    """Random inputs of the seeding: first row of each segment and the [k-1, G, T] uniforms.

    The first row is uniform in its segment, or with ``weights [N]`` (rows in segment order) the
    first row whose running weight in the segment exceeds ``u * (segment total)``. Drawn on the
    generator's device (then moved to ``device``), so a CPU generator also seeds CUDA inputs.
    """
    g = sizes.numel()
    src = generator.device if generator is not None else torch.device(device)  # a CPU generator also serves CUDA x
    u0 = torch.rand(g, generator=generator, device=src, dtype=torch.float64).to(device)
    sizes = sizes.to(device)
    if weights is None:
        first = torch.minimum((u0 * sizes.to(torch.float64)).long(), sizes - 1)
    else:
        first = _weighted_rows(weights.to(device), sizes, u0)
    draws = torch.rand((max(k - 1, 0), g, trials), generator=generator, device=src, dtype=torch.float64)
    return first, draws.to(device)


def _weighted_rows(weights: Tensor, sizes: Tensor, u: Tensor) -> Tensor:
    """Per segment, the first row (segment-relative) whose running weight exceeds ``u_g`` times the
    segment's total weight, never past the segment's last row of positive weight."""
    cum = torch.cumsum(weights.to(torch.float64), 0)
    ends = torch.cumsum(sizes, 0)
    starts = ends - sizes
    base = torch.where(starts > 0, cum[(starts - 1).clamp(min=0)], 0.0)
    total = cum[ends - 1] - base
    rows = torch.searchsorted(cum, base + u * total, right=True)
    positive = torch.arange(weights.shape[0], device=weights.device)[weights > 0]
    last = positive[torch.searchsorted(positive, ends, right=False) - 1]  # last positive row of each segment
    return torch.minimum(rows, last) - starts


def check_random_state(seed) -> np.random.RandomState:
    """scikit-learn's ``check_random_state``: None -> numpy's global RandomState, an int -> a new
    RandomState seeded with it, a RandomState -> itself."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"`random_state` must be None, an int or a numpy RandomState, got {seed!r}")


def plusplus_random_state(x: Tensor, k: int, rs: np.random.RandomState, weights: Optional[Tensor] = None,
                          n_local_trials: Optional[int] = None) -> Tensor:
    """Greedy k-means++ on all of ``x`` with scikit-learn's random numbers from ``rs``.

    As ``sklearn.cluster.kmeans_plusplus`` draws them: the first row is
    ``rs.choice(N, p=w / sum(w))``, then each step takes ``rs.uniform(size=T)``; a candidate is the
    first row whose running sum of ``w_i D_i^2`` exceeds ``u * sum_i w_i D_i^2``. Row indices int64 [k].
    """
    n = x.shape[0]
    trials = local_trials(k, n_local_trials)
    if weights is None:
        p = np.ones(n, dtype=np.float64 if x.dtype == torch.float64 else np.float32)
    else:
        p = weights.detach().cpu().numpy()
    first = torch.tensor([int(rs.choice(n, p=p / p.sum()))], dtype=torch.int64, device=x.device)
    draws = torch.from_numpy(rs.uniform(size=(max(k - 1, 0), 1, trials))).to(x.device)
    offsets = torch.tensor([0, n], dtype=torch.int64, device=x.device)
    return kmeans_plusplus_op(x, offsets, k, first, draws, weights=weights)[0]


def plusplus_segments(x: Tensor, offsets: Tensor, k: int, *, generator=None, n_local_trials=None,
                      weights: Optional[Tensor] = None) -> Tensor:
    """Greedy k-means++ in every segment ``x[offsets[g]:offsets[g+1]]`` -> row indices int64 [G, k]."""
    trials = local_trials(k, n_local_trials)
    sizes = (offsets[1:] - offsets[:-1]).to(device=x.device, dtype=torch.int64)
    first, draws = plusplus_draws(sizes, k, trials, generator, x.device, weights)
    first = first + offsets[:-1].to(x.device)
    return kmeans_plusplus_op(x, offsets.to(x.device, torch.int64), k, first, draws, weights=weights)


def kmeans_assign(x: Tensor, centers: Tensor, *, precision: str = "highest"):
    """Nearest center of each row of ``x [N,d]`` among ``centers [K,d]``, fused (no [N,K] buffer).

    Returns ``(labels int64 [N], sqdist [N])``, ties to the lower index; ``sqdist`` in the
    accumulation dtype. ``precision``: "highest" (float32-exact products), "high" (TF32 on the GPU)
    or "medium" (bf16 products on the GPU).
    """
    check_kmeans_assign(x, centers, precision)
    _backend.refresh()
    return kmeans_assign_op(x, centers, precision=precision_code(precision), groups=None, group_k=0)


def kmeans_update(x: Tensor, labels: Tensor, k: int, *, prev_centers: Optional[Tensor] = None,
                  sample_weight: Optional[Tensor] = None):
    """Lloyd update: ``centers_j = sum_{labels_i = j} w_i x_i / W_j``, ``W_j = sum_{labels_i = j} w_i``.

    Returns ``(centers [k,d] in the accumulation dtype, counts)``: ``counts`` int64 [k] without
    ``sample_weight [N]`` (w = 1), else the weight sums W [k] (accumulation dtype). A cluster with
    W_j = 0 keeps its row of ``prev_centers`` (zero when None). On the GPU the sums use atomics
    unless ``torch.are_deterministic_algorithms_enabled()``, which selects an ordered sum.
    """
    check_kmeans_update(x, labels, k, prev_centers, sample_weight)
    _backend.refresh()
    return kmeans_update_op(x, labels, int(k), prev_centers=prev_centers,
                            deterministic=torch.are_deterministic_algorithms_enabled(), weights=sample_weight)


def kmeans_lloyd_step(x: Tensor, centers: Tensor, *, groups: Optional[Tensor] = None, group_k: int = 0,
                      precision: str = "highest", sample_weight: Optional[Tensor] = None):
    """One Lloyd step: ``kmeans_assign(x, centers)``, then ``kmeans_update(x, labels, K, prev_centers=centers,
    sample_weight=sample_weight)``.

    Returns ``(labels int64 [N], sqdist [N], new_centers [K,d], counts [K])`` (counts: int64, or the
    weight sums with ``sample_weight``) in the accumulation dtype. With ``groups [N]``, row i only sees
    the centers ``[groups[i]*group_k, (groups[i]+1)*group_k)``. Runs on the CPU (one pass over ``x``)
    and the reference backend.
    """
    check_kmeans_assign(x, centers, precision)
    if groups is not None:
        if int(group_k) < 1:
            raise ValueError(f"kmeans_lloyd_step: `group_k` must be >= 1 with `groups`, got {group_k}")
        check_ids(groups, "groups", centers.shape[0] // int(group_k), n=x.shape[0], op="kmeans_lloyd_step")
    if sample_weight is not None:
        check_sample_weight(sample_weight, x, op="kmeans_lloyd_step")
    _backend.refresh()
    return kmeans_lloyd_step_op(x, centers, precision=precision_code(precision), groups=groups, group_k=int(group_k),
                                weights=sample_weight)


def kmeans_plusplus(x, k: int, *, sample_weight=None, x_squared_norms=None, random_state=None,
                    generator: Optional[torch.Generator] = None, n_local_trials: Optional[int] = None):
    """Greedy k-means++ seeding of ``k`` centers from the rows of ``x [N,d]`` (scikit-learn's).

    The first center is drawn with probability ``w_i / sum w`` (uniform without ``sample_weight``);
    each later step draws ``n_local_trials`` candidates with probability ``w_i D_i^2 / sum w D^2``
    and keeps the one of least potential ``sum_i w_i D_i^2`` (``None`` -> ``2 + log k``, 1 = plain
    D^2 sampling). Every step reads ``x`` once.

    ``x`` is a tensor or, as for ``sklearn.cluster.kmeans_plusplus``, an array-like (numpy in,
    numpy out). Random numbers: ``random_state`` (None, an int or a numpy RandomState) draws them
    as scikit-learn does; otherwise ``generator`` (a ``torch.Generator``; None: torch's default).
    Array-like ``x`` without either uses numpy's global RandomState, as scikit-learn.
    ``x_squared_norms`` is accepted for scikit-learn's signature and not needed (distances are
    explicit differences). Deterministic for a given seed and backend. Returns
    ``(centers [k,d] in the accumulation dtype, indices int64 [k])``.
    """
    op = "kmeans_plusplus"
    as_numpy = not isinstance(x, Tensor)
    if as_numpy:
        a = np.asarray(x)
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        x = torch.from_numpy(np.ascontiguousarray(a))
    if sample_weight is not None and not isinstance(sample_weight, Tensor):
        sample_weight = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64), device=x.device)
    trials = check_kmeans_plusplus(x, k, n_local_trials, sample_weight)
    if generator is not None and random_state is not None:
        raise ValueError(f"{op}: pass `generator` or `random_state`, not both")
    k = int(k)
    w = None if sample_weight is None else sample_weight.detach().to(acc_dtype(x.dtype)).contiguous()
    _backend.refresh()
    if generator is None and (random_state is not None or as_numpy):
        idx = plusplus_random_state(x, k, check_random_state(random_state), w, trials)
    else:
        offsets = torch.tensor([0, x.shape[0]], dtype=torch.int64, device=x.device)
        idx = plusplus_segments(x, offsets, k, generator=generator, n_local_trials=trials, weights=w)[0]
    centers = x.detach().to(acc_dtype(x.dtype))[idx]
    if as_numpy:
        return centers.numpy(), idx.numpy()
    return centers, idx
