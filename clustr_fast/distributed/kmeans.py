"""k-means over the union of the rows of every rank: seeding (k-means++, k-means||) and Lloyd.

Each rank holds a shard ``x [n_r, d]`` (any n_r, 0 included); the data set is the concatenation
of the shards in rank order. With no initialised process group, or a group of one rank, every
function here is the single-process one (:func:`clustr_fast.kmeans_plusplus`,
:class:`clustr_fast.KMeans`) and returns exactly its result.

Collectives (all on ``group``; the backend's device: NCCL with CUDA tensors, Gloo with CPU ones):

- every call: one ``all_gather`` of the shapes and arguments (:func:`._comm.agree`);
- k-means++: two collectives per center (:mod:`._plusplus`); :func:`kmeans_plusplus` first
  broadcasts rank 0's random draws;
- k-means (:func:`kmeans`): one ``all_reduce`` for the mean of the rows and one for the variance
  (the tolerance), then ONE ``all_reduce`` per Lloyd iteration of ``[K*d sums, K counts, changed
  labels]`` in float64, ``8 (K d + K + 1)`` bytes, and one for the inertia at the end. Only when
  a cluster is empty, one ``all_gather`` of the farthest rows. Every stopping test reads reduced
  values (or an exactly rounded sum of them), so every rank stops at the same iteration.
- k-means||: per round, one ``all_gather`` of the counts of sampled rows, one of the rows, one
  ``all_reduce`` of the cost; then one ``all_reduce`` of the candidates' weights and one
  ``broadcast`` of the k centers that rank 0 picks among them.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional, Union

import torch
from torch import Tensor

from .._validate import HIGHEST, acc_dtype, check_finite, check_float, check_int, check_matrix, check_real, local_trials
from ..ops.kmeans import (kmeans_assign_op, kmeans_lloyd_step_op, kmeans_update_op,
                          lloyd_step_runs_here, plusplus_draws)
from ..ops.kmeans import kmeans_plusplus as _kmeans_plusplus_single
from ._comm import Comm, Packed, agree, checked, dtype_code, resolve
from ._plusplus import greedy_plusplus

__all__ = ["kmeans", "kmeans_plusplus", "PARALLEL_ROUNDS", "PARALLEL_OVERSAMPLING"]

# k-means|| (Bahmani et al. 2012): rounds of independent sampling, each row kept with probability
# min(1, l D^2 / cost) for l = PARALLEL_OVERSAMPLING * k; about l * rounds candidates in all.
PARALLEL_ROUNDS = 5
PARALLEL_OVERSAMPLING = 2.0

# Rows converted to float64 at once by the local sums of the Lloyd update (bounds the temporary).
_SUM_CHUNK_ENTRIES = 1 << 18


# --------------------------------------------------------------------------- local checks


def check_points(x, op):
    """``x`` a finite 2-D float tensor (zero rows allowed: a rank may hold none)."""
    check_matrix(x, "x", op=op)
    check_float(x, "x", op=op)
    check_finite(x, "x", op=op)


def fingerprint(t: Optional[Tensor]) -> float:
    """A 52-bit hash of the bytes of ``t`` (exactly representable in float64): equal tensors, equal hash."""
    if t is None:
        return -1.0
    data = t.detach().to(acc_dtype(t.dtype)).cpu().contiguous().numpy().tobytes()
    return float(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 12)


# --------------------------------------------------------------------------- shared pieces


def shared_draws(comm: Comm, sizes: Tensor, k: int, trials: int, generator, device):
    """The seeding's random inputs (:func:`clustr_fast.ops.kmeans.plusplus_draws`) of group rank 0.

    Every rank draws (so every rank's generator advances alike), then rank 0's draws are
    broadcast. Returns ``(first [G] int64, draws [k-1, G, T] float64)`` on the host.
    """
    first, draws = plusplus_draws(sizes.to(device), k, trials, generator, device)
    pk = Packed([tuple(first.shape), tuple(draws.shape)], device)
    pk.views[0].copy_(first)
    pk.views[1].copy_(draws)
    comm.broadcast_(pk.buf, "the random draws of rank 0")
    return pk.views[0].round().long().cpu(), pk.views[1].cpu()


def fetch_rows(comm: Optional[Comm], xa: Tensor, index: list, rows_per_rank: list, stage: str) -> Tensor:
    """Rows ``index`` (positions in the rank-ordered concatenation) on every rank, ``[len, d]`` in ``xa``'s dtype."""
    if comm is None:
        return xa[torch.tensor(index, dtype=torch.int64, device=xa.device)]
    start = sum(rows_per_rank[:comm.rank])
    pk = Packed([(len(index), xa.shape[1])], xa.device)
    mine = [(j, i - start) for j, i in enumerate(index) if start <= i < start + xa.shape[0]]
    if mine:
        slots = torch.tensor([j for j, _ in mine], device=xa.device)
        local = torch.tensor([i for _, i in mine], device=xa.device)
        pk.views[0][slots] = xa[local].to(torch.float64)
    comm.all_reduce_(pk.buf, stage)
    return pk.views[0].to(xa.dtype)


def global_tolerance(comm: Comm, xa: Tensor, gid: Optional[Tensor], G: int, sizes: list, tol: float,
                     mean: Optional[Tensor] = None) -> list:
    """scikit-learn's absolute tolerance per group over all ranks: ``tol * mean_f var(x_g[:, f])``.

    Two passes (means, then centered squares), one ``all_reduce`` each; 0 for groups of fewer than
    2 rows or ``tol == 0``. The mean over features is an exactly rounded sum (``math.fsum``) of
    reduced values, so every rank gets the same numbers. ``mean [G, d]`` float64: the group means
    when already known (skips the first pass).
    """
    if tol == 0 or all(s < 2 for s in sizes):
        return [0.0] * G
    d, dev = xa.shape[1], xa.device
    groups = gid if gid is not None else torch.zeros(xa.shape[0], dtype=torch.int64, device=dev)
    n = torch.tensor(sizes, dtype=torch.float64, device=dev).clamp(min=1)[:, None]
    if mean is None:
        sums = torch.zeros((G, d), dtype=torch.float64, device=dev)
        _add_rows(sums, groups, xa)
        comm.all_reduce_(sums, "the means (tolerance)")
        mean = sums / n
    sq = torch.zeros((G, d), dtype=torch.float64, device=dev)
    step = max(1, _SUM_CHUNK_ENTRIES // max(d, 1))
    for r0 in range(0, xa.shape[0], step):
        g = groups[r0:r0 + step]
        sq.index_add_(0, g, (xa[r0:r0 + step].to(torch.float64) - mean[g]).square_())
    comm.all_reduce_(sq, "the variances (tolerance)")
    var = (sq / n).cpu().tolist()
    return [tol * math.fsum(v) / d if s >= 2 else 0.0 for v, s in zip(var, sizes)]


def local_step(xa: Tensor, centers: Tensor, groups: Optional[Tensor], group_k: int, sums: Tensor,
               counts: Tensor) -> Tensor:
    """This rank's part of a Lloyd update: labels of the rows, float64 cluster sums and counts.

    One pass on the CPU (the fused ``kmeans_lloyd_step`` op), else ``kmeans_assign`` and
    ``kmeans_update``; the sums are the op's means times the counts (exact to the rounding of
    the means), written into ``sums [K, d]`` and ``counts [K]`` (float64 views of a packed buffer).
    With ``groups``, row i only sees its group's ``group_k`` centers. Returns the labels.
    """
    if lloyd_step_runs_here(xa.device):
        labels, _, means, cnt = kmeans_lloyd_step_op(xa, centers, precision=HIGHEST, groups=groups, group_k=group_k)
    else:
        labels = kmeans_assign_op(xa, centers, precision=HIGHEST, groups=groups, group_k=group_k)[0]
        means, cnt = kmeans_update_op(xa, labels, centers.shape[0], prev_centers=None,
                                      deterministic=torch.are_deterministic_algorithms_enabled())
    counts.copy_(cnt)
    torch.mul(means.to(torch.float64), counts[:, None], out=sums)
    return labels


def _add_rows(sums: Tensor, labels: Tensor, xa: Tensor):
    """``sums[labels[i]] += x_i`` in float64, in row chunks."""
    step = max(1, _SUM_CHUNK_ENTRIES // max(xa.shape[1], 1))
    for r0 in range(0, xa.shape[0], step):
        sums.index_add_(0, labels[r0:r0 + step], xa[r0:r0 + step].to(torch.float64))


# --------------------------------------------------------------------------- k-means++


def kmeans_plusplus(x: Tensor, k: int, *, generator: Optional[torch.Generator] = None,
                    n_local_trials: Optional[int] = None, group=None):
    """Greedy k-means++ seeding of ``k`` centers from the rows of every rank's ``x [n_r, d]``.

    Exact over the union of the shards: each step draws from the global D^2 law (per-rank sums
    exchanged, the rank holding the drawn row picks it, the candidate rows are broadcast) and
    keeps the candidate of least global potential. The draws are those of group rank 0's
    ``generator`` (``None``: its default generator on ``x``'s device); every rank's generator
    advances alike. Equal to :func:`clustr_fast.kmeans_plusplus` on the rank-ordered
    concatenation with the same generator state, up to draws that land within float64 rounding
    of a boundary between two rows. ``n_local_trials``: as the single-process function.

    Returns ``(centers [k, d]`` in the accumulation dtype, the same on every rank, ``indices int64 [k]``:
    positions in the rank-ordered concatenation of the shards).
    """
    op = "distributed.kmeans_plusplus"
    comm = resolve(group, op)
    if comm is None:
        return _kmeans_plusplus_single(x, k, generator=generator, n_local_trials=n_local_trials)

    def local():
        check_points(x, op)
        kk = check_int(k, "k", low=1, op=op)
        trials = local_trials(kk, n_local_trials, op=op)
        return [("x.shape[1]", x.shape[1], True), ("x.dtype", dtype_code(x.dtype), True), ("k", kk, True),
                ("n_local_trials", trials, True), ("rows", x.shape[0], False)]

    fields, err = checked(local)
    table = agree(comm, fields or _blank(5), err)
    k = int(k)
    rows = [int(v) for v in table[:, 4].tolist()]
    if k > sum(rows):
        raise ValueError(f"{op}: `k`={k} is larger than the {sum(rows)} rows of `x` over all ranks")
    trials = int(table[0, 3])
    xa = x.detach().to(acc_dtype(x.dtype)).contiguous()
    first, draws = shared_draws(comm, torch.tensor([sum(rows)]), k, trials, generator, xa.device)
    gid = torch.zeros(xa.shape[0], dtype=torch.int64, device=xa.device)
    counts = torch.tensor(rows, dtype=torch.int64)[:, None]
    centers, pos = greedy_plusplus(comm, xa, gid, [0, xa.shape[0]], counts, k, first, draws)
    return centers[0], pos[0].to(x.device)


def _blank(n):
    return [("?", float("nan"), False)] * n


# --------------------------------------------------------------------------- k-means||


def _mix(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s own generator for k-means|| sampling (splitmix64 of seed and rank)."""
    z = (seed * 0x9E3779B97F4A7C15 + (rank + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def _sample(weights: Tensor, u: Tensor) -> Tensor:
    """Indices drawn with probability proportional to ``weights`` (float64 >= 0, sum > 0), one per ``u`` in [0, 1)."""
    cum = torch.cumsum(weights, 0)
    idx = torch.searchsorted(cum, u * cum[-1], right=True)
    last = (weights > 0).nonzero()[-1, 0]
    return torch.minimum(idx, last)


def weighted_plusplus(c: Tensor, w: Tensor, k: int, gen: torch.Generator, trials: int) -> Tensor:
    """Greedy k-means++ of ``k`` rows of ``c [m, d]`` weighted by ``w [m]`` -> ``k`` row indices.

    The first row is drawn with probability ``w / sum w``, then each step draws ``trials``
    candidates with probability ``w D^2 / sum w D^2`` and keeps the one of least weighted
    potential ``sum_j w_j min(D^2_j, ||c_j - c_t||^2)``; uniform over the rows not chosen yet when
    every ``w D^2`` is 0. Float64; draws from ``gen`` (a CPU generator).
    """
    dev = c.device
    c64, w = c.to(torch.float64), w.to(torch.float64)
    m = c64.shape[0]
    norms = c64.square().sum(1)

    def sqdist(rows):
        return (norms[rows][:, None] + norms[None, :] - 2.0 * (c64[rows] @ c64.T)).clamp_min_(0.0)

    def rand(n):
        return torch.rand(n, generator=gen, dtype=torch.float64).to(dev)

    chosen = torch.zeros(m, dtype=torch.bool, device=dev)
    first = _sample(w if bool(w.sum() > 0) else torch.ones_like(w), rand(1))
    closest = sqdist(first)[0]
    closest[first] = 0.0
    idx = [first]
    chosen[first] = True
    for _ in range(1, k):
        wd = w * closest
        weights = wd if bool(wd.sum() > 0) else (~chosen).to(torch.float64)
        cand = _sample(weights, rand(trials))
        dc = torch.minimum(sqdist(cand), closest[None, :])
        dc[torch.arange(cand.numel(), device=dev), cand] = 0.0
        best = int((dc * w[None, :]).sum(1).argmin())
        closest = dc[best]
        idx.append(cand[best:best + 1])
        chosen[cand[best]] = True
    return torch.cat(idx)


def parallel_init(comm: Optional[Comm], xa: Tensor, k: int, seed: int, rows: list, trials: int) -> Tensor:
    """k-means|| (Bahmani et al. 2012) over all ranks -> ``k`` centers ``[k, d]``, the same on every rank.

    One uniform row; then ``PARALLEL_ROUNDS`` rounds in which every rank keeps each of its rows
    with probability ``min(1, l D^2 / cost)`` (``l = PARALLEL_OVERSAMPLING * k``, D^2 to the
    nearest candidate, cost the global sum of D^2), the kept rows gathered on every rank. Too few
    candidates (duplicate rows) are topped up with uniform rows. Each candidate weighs the number
    of rows nearest to it; rank 0 runs :func:`weighted_plusplus` on them and broadcasts the
    centers. The shared draws come from a CPU generator seeded with ``seed``, the per-row draws
    from one generator per rank (seeded from ``seed`` and the rank): deterministic for a seed,
    the world size and the shards.
    """
    dev, n, d = xa.device, xa.shape[0], xa.shape[1]
    N = sum(rows)
    rank = comm.rank if comm is not None else 0
    shared = torch.Generator().manual_seed(int(seed))
    own = torch.Generator(device=dev).manual_seed(_mix(int(seed), rank))
    l = PARALLEL_OVERSAMPLING * k

    def nearest(c):
        if not n:
            return xa.new_empty(0, dtype=torch.int64), xa.new_empty(0)
        return kmeans_assign_op(xa, c, precision=HIGHEST, groups=None, group_k=0)

    def total(t, stage):
        s = t.sum(dtype=torch.float64).reshape(1)
        return float(comm.all_reduce_(s, stage)) if comm is not None else float(s)

    u0 = float(torch.rand(1, generator=shared, dtype=torch.float64))
    cands = [fetch_rows(comm, xa, [min(int(u0 * N), N - 1)], rows, "the first k-means|| center")]
    closest = nearest(cands[0])[1]
    cost = total(closest, "the k-means|| cost (round 0)")
    for r in range(PARALLEL_ROUNDS):
        if not cost > 0:
            break
        u = torch.rand(n, generator=own, dtype=torch.float64, device=dev)
        picked = xa[u * cost < l * closest.to(torch.float64)]
        if comm is not None:
            counts = comm.all_gather(torch.tensor([picked.shape[0]], device=dev), f"the k-means|| sample sizes "
                                     f"(round {r + 1})").flatten().tolist()
            pad = torch.zeros((max(counts), d), dtype=xa.dtype, device=dev)
            pad[:picked.shape[0]] = picked
            every = comm.all_gather(pad, f"the k-means|| samples (round {r + 1})")
            picked = torch.cat([every[q, :c] for q, c in enumerate(counts)])
        if picked.shape[0] == 0:
            continue
        cands.append(picked)
        closest = torch.minimum(closest, nearest(picked)[1])
        cost = total(closest, f"the k-means|| cost (round {r + 1})")
    c = torch.cat(cands)
    if c.shape[0] < k:  # fewer distinct rows than k near the candidates: uniform rows fill up
        u = torch.rand(k - c.shape[0], generator=shared, dtype=torch.float64).tolist()
        c = torch.cat([c, fetch_rows(comm, xa, [min(int(v * N), N - 1) for v in u], rows,
                                     "the k-means|| extra candidates")])
    w = torch.bincount(nearest(c)[0], minlength=c.shape[0]).to(torch.float64)
    if comm is None:
        return c[weighted_plusplus(c, w, k, shared, trials)]
    comm.all_reduce_(w, "the k-means|| candidate weights")
    pk = Packed([(k, d)], dev)
    if comm.rank == 0:
        pk.views[0].copy_(c[weighted_plusplus(c, w, k, shared, trials)])
    comm.broadcast_(pk.buf, "the k-means|| centers of rank 0")
    return pk.views[0].to(xa.dtype)


# --------------------------------------------------------------------------- Lloyd


def exact_sqdist_sum(a: Tensor, b: Tensor) -> float:
    """``sum_j ||a_j - b_j||^2`` in float64: per-row sums, then an exactly rounded sum (``math.fsum``).

    The same number on every rank for the same ``a`` and ``b`` whatever the thread count (a plain
    ``sum`` may split its terms by thread), so a stopping test on it never splits the ranks.
    """
    return math.fsum((a.to(torch.float64) - b.to(torch.float64)).square().sum(1).cpu().tolist())


def _relocate(comm: Comm, xc: Tensor, labels: Tensor, old: Tensor, sums: Tensor, counts: Tensor, empty: list,
              start: int, it: int) -> Tensor:
    """scikit-learn's relocation of empty clusters over all ranks -> the new centers (float64).

    The m empty clusters (ascending) take the m rows farthest from their (old) centers over all
    ranks, farthest first (ties: the lower position in the concatenation); each such row leaves
    its cluster's sum and count. When every row sits on its center the empty clusters get the
    zero vector, as in scikit-learn. One ``all_gather`` of each rank's m farthest rows; every rank
    then applies the same moves to the same reduced ``sums`` and ``counts`` (changed in place).
    """
    m, (n, d), dev = len(empty), xc.shape, xc.device
    mine = torch.full((m, d + 3), -1.0, dtype=torch.float64, device=dev)
    if n:
        dist = torch.cat([(xc[r0:r0 + 65536] - old[labels[r0:r0 + 65536]]).square_().sum(1)
                          for r0 in range(0, n, 65536)]).to(torch.float64)
        top = torch.sort(dist, descending=True, stable=True)[1][:m]
        mine[:top.numel(), 0] = dist[top]
        mine[:top.numel(), 1] = (top + start).to(torch.float64)
        mine[:top.numel(), 2] = labels[top].to(torch.float64)
        mine[:top.numel(), 3:] = xc[top].to(torch.float64)
    every = comm.all_gather(mine, f"the rows for empty clusters (iteration {it})").reshape(-1, d + 3).cpu()
    cand = sorted(range(every.shape[0]), key=lambda j: (-float(every[j, 0]), float(every[j, 1])))[:m]
    if float(every[cand[0], 0]) <= 0.0:
        sums[empty] = 0.0
        return sums.clone()
    for e, j in zip(empty, cand):
        row, was = every[j, 3:].to(dev), int(every[j, 2])
        sums[was] -= row
        counts[was] -= 1.0
        sums[e] = row
        counts[e] = 1.0
    return torch.where((counts > 0)[:, None], sums / counts.clamp(min=1)[:, None], sums)


def lloyd(comm: Comm, xc: Tensor, centers: Tensor, max_iter: int, tol: float, start: int):
    """scikit-learn's Lloyd run (``_kmeans_single_lloyd``, as :class:`clustr_fast.KMeans`) over all ranks.

    ``xc``: this rank's rows, centered on the global mean (as the estimator centers its data);
    ``centers`` the same on every rank; ``start``: position of this rank's first row in the
    concatenation. Iteration i assigns every row to ``centers`` and sums the clusters
    (:func:`local_step`), then ONE ``all_reduce`` of ``[sums K*d, counts K, changed labels]`` (float64);
    the new centers are the reduced means, an empty cluster taking the farthest row
    (:func:`_relocate`, the only other collective, only when a cluster is empty). Stops when no
    label changed (strict convergence; the labels are then those of the last assignment) or the
    squared center shift (:func:`exact_sqdist_sum`) is at most ``tol``; otherwise the labels are
    those of the final centers. The tests read only reduced values, so every rank stops together.
    Returns ``(centers, labels of the local rows, inertia, n_iter)``; inertia is
    ``sum_i ||x_i - c_{labels_i}||^2`` over all ranks (one more ``all_reduce``).
    """
    K, d = centers.shape
    n, dev = xc.shape[0], xc.device
    pk = Packed([(K, d), (K,), (1,)], dev)
    sums, counts, changed = pk.views
    labels_old, strict, it = None, False, 0
    labels = torch.empty(0, dtype=torch.int64, device=dev)
    for it in range(1, max_iter + 1):
        pk.zero_()
        if n:
            labels = local_step(xc, centers, None, 0, sums, counts)
            if labels_old is not None:
                changed[0] = (labels != labels_old).sum()
        comm.all_reduce_(pk.buf, f"the Lloyd sums (iteration {it})")
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            new = _relocate(comm, xc, labels, centers, sums, counts, empty, start, it)
        else:
            new = sums / counts[:, None]
        new = new.to(centers.dtype)
        shift = exact_sqdist_sum(new, centers)
        centers = new
        if labels_old is not None and float(changed[0]) == 0:
            strict = True
            break
        if shift <= tol:
            break
        labels_old = labels
    if not strict and n:
        labels = kmeans_assign_op(xc, centers, precision=HIGHEST, groups=None, group_k=0)[0]
    inertia = torch.zeros(1, dtype=torch.float64, device=dev)
    for r0 in range(0, n, 65536):
        inertia += (xc[r0:r0 + 65536] - centers[labels[r0:r0 + 65536]]).square_().sum(1).sum(dtype=torch.float64)
    comm.all_reduce_(inertia, "the inertia")
    return centers, labels, float(inertia), it


def global_mean(comm: Comm, xa: Tensor, n_total: int) -> Tensor:
    """Mean of the rows of every rank (float64 [d]): one ``all_reduce`` of the float64 column sums."""
    sums = torch.zeros((1, xa.shape[1]), dtype=torch.float64, device=xa.device)
    _add_rows(sums, torch.zeros(xa.shape[0], dtype=torch.int64, device=xa.device), xa)
    comm.all_reduce_(sums, "the mean of the rows")
    return sums[0] / max(n_total, 1)


# First-center draws replay numpy's RandomState.choice over a float64 running sum of N weights;
# above this many rows, floor(u * N) from the same uniform stands in (no N-sized array).
_CHOICE_MAX_ROWS = 1 << 24


def sklearn_draws(seed: int, n: int, k: int, trials: int, dtype) -> tuple[int, Tensor]:
    """The random numbers of :class:`clustr_fast.KMeans` k-means++ (``random_state=seed``, no weights).

    ``(first row, draws [k-1, 1, T] float64)``: ``RandomState(seed).choice(n, p=uniform)`` (uniform
    weights in the data's numpy dtype), then ``uniform(size=(k-1, 1, T))``. The same on every rank
    (numpy's stream is the same everywhere).
    """
    import numpy as np

    rs = np.random.RandomState(seed)
    if n <= _CHOICE_MAX_ROWS:
        p = np.ones(n, dtype=np.float64 if dtype == torch.float64 else np.float32)
        first = int(rs.choice(n, p=p / p.sum()))
    else:
        first = min(int(rs.random_sample() * n), n - 1)
    draws = torch.from_numpy(rs.uniform(size=(max(k - 1, 0), 1, trials)))
    return first, draws


def kmeans(x: Tensor, k: int, *, init: Union[str, Tensor] = "k-means++", max_iter: int = 300, tol: float = 1e-4,
           seed: int = 0, n_local_trials: Optional[int] = None, group=None):
    """k-means over the union of every rank's rows ``x [n_r, d]``: :class:`clustr_fast.KMeans` across ranks.

    The run of ``clustr_fast.KMeans(k, init=init, n_init=1, max_iter=max_iter, tol=tol,
    random_state=seed, n_local_trials=n_local_trials)`` on the rank-ordered concatenation
    (scikit-learn's Lloyd, :func:`lloyd`): the rows are centered on their global mean, stopping
    is strict convergence or a squared center shift at most ``tol * mean(var(x, 0))`` (variance of
    all rows), empty clusters take the farthest rows. ``init``: "k-means++" (greedy, the
    estimator's random numbers for ``random_state=seed``), "k-means||" (:func:`parallel_init`,
    deterministic for a seed, the world size and the shards) or the initial centers ``[k, d]``
    (the same on every rank; checked). One packed ``all_reduce`` per iteration (module
    docstring). With one process (or a group of one rank) this is exactly that estimator's fit.
    float16/bfloat16 inputs are computed in float32.

    Returns ``(centers [k, d]`` (float32, or float64 for float64 input; the same on every rank),
    ``labels int64 [n_r]`` of this rank's rows, ``inertia`` (float: sum over all ranks of
    ``||x_i - c_{labels_i}||^2``), ``n_iter)``.
    """
    op = "distributed.kmeans"
    comm = resolve(group, op)

    def local():
        check_points(x, op)
        kk = check_int(k, "k", low=1, op=op)
        iters = check_int(max_iter, "max_iter", low=1, op=op)
        t = check_real(tol, "tol", op=op)
        if t < 0:
            raise ValueError(f"{op}: `tol` must be >= 0, got {t}")
        check_int(seed, "seed", low=0, high=2**32 - 1, op=op)
        trials = local_trials(kk, n_local_trials, op=op)
        if isinstance(init, Tensor):
            check_matrix(init, "init", op=op)
            check_float(init, "init", op=op)
            check_finite(init, "init", op=op)
            if tuple(init.shape) != (kk, x.shape[1]):
                raise ValueError(f"{op}: `init` must have shape ({kk}, {x.shape[1]}), got {tuple(init.shape)}")
            if init.device != x.device:
                raise ValueError(f"{op}: `init` is on {init.device} but `x` is on {x.device}")
            mode = 2.0
        elif isinstance(init, str) and init in ("k-means++", "k-means||"):
            mode = 0.0 if init == "k-means++" else 1.0
        else:
            raise ValueError(f"{op}: `init` must be 'k-means++', 'k-means||' or a tensor of centers, got {init!r}")
        return [("x.shape[1]", x.shape[1], True), ("x.dtype", dtype_code(x.dtype), True), ("k", kk, True),
                ("max_iter", iters, True), ("tol", t, True), ("init", mode, True),
                ("init (the centers' values)", fingerprint(init if mode == 2.0 else None), True),
                ("n_local_trials", trials, True), ("rows", x.shape[0], False)]

    if comm is None:
        local()
        return _kmeans_single(x, int(k), init, int(max_iter), float(tol), int(seed), n_local_trials)
    fields, err = checked(local)
    table = agree(comm, fields or _blank(9), err)
    k, max_iter, tol = int(k), int(max_iter), float(tol)
    rows = [int(v) for v in table[:, 8].tolist()]
    N, start = sum(rows), sum(rows[:comm.rank])
    if k > N:
        raise ValueError(f"{op}: `k`={k} is larger than the {N} rows of `x` over all ranks")
    xa = x.detach().to(acc_dtype(x.dtype)).contiguous()
    trials = local_trials(k, n_local_trials)
    mean64 = global_mean(comm, xa, N)
    tol_abs = global_tolerance(comm, xa, None, 1, [N], tol, mean64[None, :])[0]
    mean = mean64.to(xa.dtype)
    xc = xa - mean
    if isinstance(init, Tensor):
        centers = init.detach().to(xa.dtype) - mean
    elif init == "k-means++":
        first, draws = sklearn_draws(int(seed), N, k, trials, xa.dtype)
        gid = torch.zeros(xa.shape[0], dtype=torch.int64, device=xa.device)
        centers = greedy_plusplus(comm, xc, gid, [0, xa.shape[0]], torch.tensor(rows)[:, None], k,
                                  torch.tensor([first]), draws)[0][0]
    else:
        centers = parallel_init(comm, xa, k, int(seed), rows, trials) - mean
    centers, labels, inertia, n_iter = lloyd(comm, xc, centers.contiguous(), max_iter, tol_abs, start)
    return centers + mean, labels, inertia, n_iter


def _kmeans_single(x, k, init, max_iter, tol, seed, n_local_trials):
    """One process: ``clustr_fast.KMeans(k, init=..., n_init=1, ...).fit(x)``; "k-means||" gives it the centers."""
    from ..estimator import KMeans

    if isinstance(init, str) and init == "k-means||":
        if k > x.shape[0]:
            raise ValueError(f"distributed.kmeans: `k`={k} is larger than the {x.shape[0]} rows of `x`")
        xa = x.detach().to(acc_dtype(x.dtype)).contiguous()
        trials = local_trials(k, n_local_trials)
        init = parallel_init(None, xa, k, seed, [xa.shape[0]], trials)
    est = KMeans(k, init=init, n_init=1, max_iter=max_iter, tol=tol, random_state=seed,
                 n_local_trials=n_local_trials).fit(x)
    return est.cluster_centers_, est.labels_, est.inertia_, est.n_iter_
