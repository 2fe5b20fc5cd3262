"""Greedy k-means++ over the rows of every rank, in every group at once.

The rows of group g, in rank order (rank 0's rows of g, then rank 1's, ...), are the rows that
one process would hold after concatenating the shards and sorting them stably by group; the
seeding here is the one :func:`clustr_fast.ops.kmeans.plusplus_segments` runs on those rows,
with the same random draws. Step s of group g:

1. every draw u picks, on every rank alike, the rank that holds the row: the per-rank sums of
   the D^2 weights (float64, gathered at the end of the previous step) are accumulated in rank
   order and the first rank whose running sum exceeds ``u * total`` owns the row; that rank
   finds it in its own running sum (the same rule as one process: the first row whose running
   weight exceeds the target; the last row of positive weight if rounding leaves none);
2. one ``all_reduce`` of ``[G, T, d + 2]`` float64 gives every rank the candidate rows (the
   owner writes its rows, the others zeros) with their positions and whether they were chosen;
3. each rank computes the distances of its rows of g to the T candidates (the grouped
   ``kmeans_assign`` op, one center per group) and their partial potentials
   ``sum_i min(D^2_i, ||x_i - c_t||^2)``; one ``all_gather`` of ``[G, T]`` float64 gives
   every rank every partial, so the global potentials (summed in rank order), the chosen
   candidate (least potential, first on ties) and the next step's per-rank weight sums are the
   same on every rank.

When every D^2 of a group is 0 (duplicate rows), the draw is uniform over the rows not chosen yet,
as in one process; the per-rank counts of those rows are tracked on every rank from the
"already chosen" flag of step 2. Two collectives per step; the sums differ from one process's
only in the order of float64 additions, so a draw can land on another row only when its target
falls within rounding of a boundary between two rows.
"""
from __future__ import annotations

import torch

from .._validate import HIGHEST
from ..ops.kmeans import kmeans_assign_op
from ._comm import Comm, Packed


def _owners(first_pos: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank holding position ``first_pos[g]`` of group g (rank order) and the position within that rank."""
    ends = counts.cumsum(0)                                        # [p, G] inclusive
    owner = (ends <= first_pos[None, :]).sum(0)                    # ranks ending at or before pos
    start = ends - counts
    return owner, first_pos - start.gather(0, owner[None, :])[0]


def _draw_owners(draws: torch.Tensor, S: torch.Tensor, F: torch.Tensor, counts: torch.Tensor):
    """Owner rank of every draw ``[G, T]`` (host tensors), with the targets and running sums.

    Returns ``(owner [G,T], found [G,T], target [G,T], before [G,T], use_free [G])``: ``before`` is
    the running sum of the ranks before the owner; ``found`` False means the target lies past
    every running sum (rounding) and the owner's last row of positive weight is taken.
    """
    cumS, cumF = torch.cumsum(S, 0), torch.cumsum(F, 0)             # [p, G], sequential per group
    use_free = ~(cumS[-1] > 0)
    W = torch.where(use_free[None, :], F, S)
    cumW = torch.where(use_free[None, :], cumF, cumS)
    target = draws * cumW[-1][:, None]                              # [G, T]
    exceeds = cumW[:, :, None] > target[None]                       # [p, G, T]
    found = exceeds.any(0)
    first_hit = exceeds.to(torch.uint8).argmax(0)
    p = S.shape[0]
    ranks = torch.arange(p)[:, None]
    last_pos = torch.where(W > 0, ranks, -1).amax(0)                # [G]
    first_rows = torch.where(counts > 0, ranks, p).amin(0)
    fallback = torch.where(last_pos >= 0, last_pos, first_rows)
    owner = torch.where(found, first_hit, fallback[:, None])
    excl = torch.cat([torch.zeros_like(cumW[:1]), cumW[:-1]])       # running sum before each rank
    before = excl[owner, torch.arange(S.shape[1])[:, None]]
    return owner, found, target, before, use_free


def _search(w: torch.Tensor, before: float, targets: list, found: list) -> list:
    """Positions in ``w`` (float64 weights of one rank's rows of a group) of the draws.

    A found draw takes the first row whose running weight (starting at ``before``) exceeds its
    target, else the last row of positive weight (row 0 if none).
    """
    pos = (w > 0).nonzero()
    last = int(pos[-1]) if pos.numel() else 0
    if not any(found):
        return [last] * len(targets)
    cs = torch.cumsum(torch.cat([w.new_full((1,), before), w]), 0)[1:]
    t = torch.tensor(targets, dtype=torch.float64, device=w.device)
    idx = torch.searchsorted(cs, t, right=True).tolist()
    return [i if (f and i < w.numel()) else last for i, f in zip(idx, found)]


def greedy_plusplus(comm: Comm, xs: torch.Tensor, gid: torch.Tensor, local_off: list, counts: torch.Tensor,
                    k: int, first: torch.Tensor, draws: torch.Tensor):
    """Greedy k-means++ in every group over all ranks.

    ``xs [n, d]``: this rank's rows sorted by group (accumulation dtype, contiguous); ``gid [n]``
    int64 their groups; ``local_off``: Python list, rows of group g are ``xs[local_off[g]:local_off[g+1]]``;
    ``counts [p, G]`` int64 (host): rows of each group on each rank; ``first [G]`` int64 (host):
    position of each group's first center among the group's rows in rank order; ``draws
    [k-1, G, T]`` float64 (host). The same ``counts``, ``first`` and ``draws`` on every rank.

    Returns ``(centers [G, k, d]`` in ``xs``'s dtype on its device, identical on every rank,
    ``positions [G, k]`` int64 (host): each center's position among its group's rows in rank order).
    """
    p, G = counts.shape
    n, d = xs.shape
    dev, me = xs.device, comm.rank
    T = draws.shape[2] if k > 1 else 1
    prefix = counts.cumsum(0) - counts                               # [p, G] rows of g before each rank
    closest = torch.full((n,), float("inf"), dtype=xs.dtype, device=dev)
    chosen = torch.zeros(n, dtype=torch.bool, device=dev)
    S = torch.zeros((p, G), dtype=torch.float64)
    F = counts.to(torch.float64).clone()                             # rows not chosen yet
    centers = torch.empty((G, k, d), dtype=xs.dtype, device=dev)
    positions = torch.empty((G, k), dtype=torch.int64)
    ar = torch.arange(n, device=dev)
    for s in range(k):
        nt = 1 if s == 0 else T
        rows, slots = [], []                                         # my candidates: local row, (g, t)
        if s == 0:
            owner, local = _owners(first, counts)
            for g in (owner == me).nonzero().flatten().tolist():
                rows.append(local_off[g] + int(local[g]))
                slots.append((g, 0))
            owner = owner[:, None]
        else:
            owner, found, target, before, use_free = _draw_owners(draws[s - 1], S, F, counts)
            mine = owner == me
            for g in mine.any(1).nonzero().flatten().tolist():
                a, b = local_off[g], local_off[g + 1]
                w = (~chosen[a:b]).to(torch.float64) if bool(use_free[g]) else closest[a:b].to(torch.float64)
                ts = mine[g].nonzero().flatten().tolist()
                picks = _search(w, float(before[g, ts[0]]), [float(target[g, t]) for t in ts],
                                [bool(found[g, t]) for t in ts])
                rows += [a + i for i in picks]
                slots += [(g, t) for t in ts]
        fetch = Packed([(G, nt, d + 2)], dev)
        if rows:
            r = torch.tensor(rows, dtype=torch.int64, device=dev)
            gs = torch.tensor([g for g, _ in slots], dtype=torch.int64, device=dev)
            ts = torch.tensor([t for _, t in slots], dtype=torch.int64, device=dev)
            buf = fetch.views[0]
            buf[gs, ts, :d] = xs[r].to(torch.float64)
            buf[gs, ts, d] = (prefix[me].to(dev)[gs] + r - torch.tensor(local_off[:-1], device=dev)[gs]).double()
            buf[gs, ts, d + 1] = chosen[r].to(torch.float64)
        comm.all_reduce_(fetch.buf, f"the k-means++ candidates (step {s})")
        buf = fetch.views[0]
        cand = buf[:, :, :d].to(xs.dtype)                            # [G, nt, d]
        cpos = buf[:, :, d].round().long().cpu()
        cwas = (buf[:, :, d + 1] > 0.5).cpu()
        part = torch.zeros((nt, G), dtype=torch.float64, device=dev)
        if n:
            dcs = torch.stack([
                kmeans_assign_op(xs, cand[:, t].contiguous(), precision=HIGHEST, groups=gid, group_k=1)[1]
                for t in range(nt)])
            part.index_add_(1, gid, torch.minimum(dcs, closest[None, :]).to(torch.float64))
        allp = comm.all_gather(part.t().contiguous(), f"the k-means++ potentials (step {s})").cpu()  # [p, G, nt]
        pot = allp[0].clone()
        for q in range(1, p):                                        # rank order, on every rank alike
            pot += allp[q]
        best = pot.argmin(1)                                         # first of the least potentials
        gi = torch.arange(G)
        if n:
            closest = torch.minimum(closest, dcs[best.to(dev)[gid], ar])
        own_best = owner[gi, best] == me
        for g in own_best.nonzero().flatten().tolist():
            chosen[rows[slots.index((g, int(best[g])))]] = True
        newly = ~cwas[gi, best]
        F[owner[gi, best][newly], gi[newly]] -= 1.0
        S = allp[:, gi, best]
        centers[:, s] = cand[gi.to(dev), best.to(dev)]
        positions[:, s] = cpos[gi, best]
    return centers, positions
