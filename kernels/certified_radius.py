"""Triton kernel for ``certified_radius`` (ClusTR Theorem 1, nearest-center classifier).

One program per BLOCK_M rows, two sweeps over the centers in tiles of BLOCK_N:
1. ``d_ij = ||f_i - mu_j||^2`` by direct differences (equal centers give equal
   distances), running (value, index) minimum: the nearest center mu_1 (lower index
   on ties);
2. the same distances again, ``r_j = (d_j - d_1) / (2 L g_{1j})`` (0 when the gap
   ``g`` is 0) over the centers of another class; mode 0 (sound) keeps the minimum,
   mode 1 (paper) keeps r at the nearest other-class center.
The gaps ``g [C, C]`` are computed once per call by ``torch.cdist`` (direct
differences). No [N, C] buffer.
"""
import torch
import triton
import triton.language as tl

from clustr_fast._validate import acc_dtype

from . import triton_interpreted
from ._common import split_launch, tl_dtype

_NONE = 2147483647


@triton.jit
def _tile_sqdist(X, MU, rows, mrow, cols, mcol, D_FEAT, sxn, sxd, smc, smd,
                 ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # squares summed over d once per tile (BLOCK_D small, chunks held per thread): a sum per
    # chunk cost 512 shuffles per chunk (sm_90a SASS, tools/sass_stats.py)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_D), dtype=ACC)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D_FEAT, BLOCK_D):
        dd = d0 + offs_d
        md = dd < D_FEAT
        xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd, mask=mrow[:, None] & md[None, :], other=0.0)
        ct = tl.load(MU + cols[:, None] * smc + dd[None, :] * smd, mask=mcol[:, None] & md[None, :], other=0.0)
        diff = xt.to(ACC)[:, None, :] - ct.to(ACC)[None, :, :]
        acc3 += diff * diff
    return tl.sum(acc3, axis=2)


@triton.jit
def _radius_kernel(X, MU, CLS, GAP, OUT, N, C, D_FEAT, lip2, sxn, sxd, smc, smd,
                   MODE: tl.constexpr, ACC: tl.constexpr, NONE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mrow = rows < N
    inf = float("inf")
    best_v = tl.zeros((BLOCK_M,), dtype=ACC) + inf
    best_i = tl.zeros((BLOCK_M,), dtype=tl.int32) + NONE
    for c0 in range(0, C, BLOCK_N):
        cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        mcol = cols < C
        dist = _tile_sqdist(X, MU, rows, mrow, cols, mcol, D_FEAT, sxn, sxd, smc, smd,
                            ACC, BLOCK_M, BLOCK_N, BLOCK_D)
        dist = tl.where(mcol[None, :], dist, inf)
        cid = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32) + tl.where(mcol, cols, NONE).to(tl.int32)[None, :]
        tv = tl.min(dist, axis=1)
        ti = tl.min(tl.where(dist == tv[:, None], cid, NONE), axis=1)
        better = (tv < best_v) | ((tv == best_v) & (ti < best_i))
        best_v = tl.where(better, tv, best_v)
        best_i = tl.where(better, ti, best_i)
    i1 = tl.where(mrow, best_i, 0).to(tl.int64)
    c1 = tl.load(CLS + i1, mask=mrow, other=0)
    r = tl.zeros((BLOCK_M,), dtype=ACC) + inf
    near_v = tl.zeros((BLOCK_M,), dtype=ACC) + inf
    near_r = tl.zeros((BLOCK_M,), dtype=ACC) + inf
    for c0 in range(0, C, BLOCK_N):
        cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        mcol = cols < C
        dist = _tile_sqdist(X, MU, rows, mrow, cols, mcol, D_FEAT, sxn, sxd, smc, smd,
                            ACC, BLOCK_M, BLOCK_N, BLOCK_D)
        cj = tl.load(CLS + cols, mask=mcol, other=0)
        other = mrow[:, None] & mcol[None, :] & (cj[None, :] != c1[:, None])
        gap = tl.load(GAP + i1[:, None] * C + cols[None, :], mask=other, other=1.0)
        rj = tl.where(gap > 0, (dist - best_v[:, None]) / (lip2 * gap), 0.0)
        if MODE == 0:
            r = tl.minimum(r, tl.min(tl.where(other, rj, inf), axis=1))
        else:
            dv = tl.where(other, dist, inf)
            tv = tl.min(dv, axis=1)
            # first column reaching the tile minimum (columns ascend, so the lower index wins)
            first = tl.min(tl.where((dv == tv[:, None]) & other, cols[None, :].to(tl.int32), NONE), axis=1)
            tr = tl.sum(tl.where(cols[None, :].to(tl.int32) == first[:, None], rj, 0.0), axis=1)
            better = (tv < near_v) & (first != NONE)
            near_v = tl.where(better, tv, near_v)
            near_r = tl.where(better, tr, near_r)
    if MODE == 1:
        r = near_r
    tl.store(OUT + rows, r, mask=mrow)


# float32/16 inputs; see split_launch. The fastest tile timed at 50k x 200 x 512 that does not
# spill on sm_90a (tests/tools/test_sass_rules.py; docs/decisions.md).
GPU_TILE_FP32 = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=4, num_warps=8)


def certified_radius(feats, centers, center_classes, lipschitz: float, mode: int = 0):
    """feats [N,d], centers [C,d], center_classes [C] -> radius [N] (float32; float64 for float64)."""
    N, D_FEAT = feats.shape
    C = centers.shape[0]
    acc = acc_dtype(feats.dtype)
    out = torch.empty((N,), device=feats.device, dtype=acc)
    if N == 0:
        return out
    gap = torch.cdist(centers.to(acc), centers.to(acc), compute_mode="donot_use_mm_for_euclid_dist").contiguous()
    if triton_interpreted():
        meta, launch = dict(BLOCK_M=max(16, min(64, triton.next_power_of_2(N))), BLOCK_N=64, BLOCK_D=32), {}
    elif acc == torch.float64:
        meta, launch = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=4), dict(num_warps=4)
    else:
        meta, launch = split_launch(GPU_TILE_FP32)
    _radius_kernel[(triton.cdiv(N, meta["BLOCK_M"]),)](
        feats, centers, center_classes.to(torch.int64).contiguous(), gap, out, N, C, D_FEAT,
        2.0 * float(lipschitz), feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1),
        MODE=int(mode), ACC=tl_dtype(acc), NONE=_NONE, **meta, **launch)
    return out
