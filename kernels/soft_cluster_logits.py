"""Triton kernels for ``soft_cluster_logits`` (ClusTR Eq. 4 over the top-D nearest centers).

Forward, one program per BLOCK_M rows:
1. distance tiles ``[BLOCK_M, BLOCK_N]`` from ``tl.dot`` (3xTF32 for "highest", TF32 for
   "high", bf16 for "medium"), merged into a running top-D list held in registers:
   while a tile holds a pair (value, index) lexicographically below the list's worst,
   the tile's best replaces it (so ties go to the lower index, as a stable sort). With
   C <= ONE_TILE_MAX_C (float32) all centers form one tile and the list is its D
   lexicographic row minima;
2. for "high"/"medium" (and top_d = C) the D selected distances recomputed exactly by
   direct differences (float32, or float64 for float64 inputs); "highest" keeps the
   selection's float32-exact (3xTF32) distances;
3. per-class online logsumexp of ``z = -d / (2 sigma^2)`` over the selection, minus the
   logsumexp over the whole selection: ``out [N, L]``, -inf for absent classes.
It writes ``out`` and the selected indices ``idx [N, D]``; no [N, C] buffer.

Backward, one program per BLOCK_M rows: recompute the D distances, the coefficients
``a_j = -s (g_{c_j} exp(z_j - Z - out_{c_j}) - G exp(z_j - Z))`` (G = sum of the
gradient over present classes), then ``grad_f = 2 sum_j a_j (f - mu_j)`` and, by
atomic adds, ``grad_mu_j -= 2 a_j (f - mu_j)``.
"""
import torch
import triton
import triton.language as tl

from ._common import acc_dtype, dot_precision, interpreted, tl_dtype

_INIT = 1 << 30  # index of the empty list slots (plus the slot number): above every center
_NONE = 2147483647  # index of masked-out tile columns: never enters the list


@triton.jit
def _lexmin(v, i, NONE: tl.constexpr):
    """Row-wise minimum of (value, index) pairs."""
    m = tl.min(v, axis=1)
    im = tl.min(tl.where(v == m[:, None], i, NONE), axis=1)
    return m, im


@triton.jit
def _lexmax(v, i):
    m = tl.max(v, axis=1)
    im = tl.max(tl.where(v == m[:, None], i, -2), axis=1)
    return m, im


@triton.jit
def _column(t, slot, s):
    """t[:, s] of a [BLOCK_M, DP] tensor."""
    return tl.sum(tl.where(slot[None, :] == s, t, 0), axis=1)


@triton.jit
def _exact_selected(X, MU, IDX, rows, mrow, slot, TOP_D, D_FEAT, sxn, sxd, smc, smd,
                    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DP: tl.constexpr):
    """[BLOCK_M, DP] squared distances ||f_i - mu_{IDX[i,s]}||^2 by direct differences.

    Each [BLOCK_M, BLOCK_D] slice of the rows is loaded once and meets the D selected centers'
    slices (gathered rows of MU), so the rows are read once rather than D times.
    """
    dv = tl.zeros((BLOCK_M, DP), dtype=ACC)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D_FEAT, BLOCK_D):
        dd = d0 + offs_d
        m2 = mrow[:, None] & (dd < D_FEAT)[None, :]
        xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd, mask=m2, other=0.0).to(ACC)
        for s in range(0, TOP_D):
            js = tl.load(IDX + rows * TOP_D + s, mask=mrow, other=0)
            mt = tl.load(MU + js[:, None] * smc + dd[None, :] * smd, mask=m2, other=0.0).to(ACC)
            diff = xt - mt
            dv += tl.where(slot[None, :] == s, tl.sum(diff * diff, axis=1)[:, None], 0.0)
    return dv


@triton.jit
def _distance_tile(X, MU, rows, mrow, xn, c0, C, D_FEAT, sxn, sxd, smc, smd,
                   ACC: tl.constexpr, DOT_PREC: tl.constexpr, CAST_BF16: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NONE: tl.constexpr):
    """(dist [BLOCK_M, BLOCK_N] = ||x||^2 + ||mu||^2 - 2 x.mu clamped at 0, inf outside C; center ids)."""
    cols = c0 + tl.arange(0, BLOCK_N)
    mcol = cols < C
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    cn = tl.zeros((BLOCK_N,), dtype=ACC)
    for d0 in range(0, D_FEAT, BLOCK_D):
        dd = d0 + offs_d
        mask_d = dd < D_FEAT
        xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd,
                     mask=mrow[:, None] & mask_d[None, :], other=0.0)
        ct = tl.load(MU + cols[None, :].to(tl.int64) * smc + dd[:, None] * smd,
                     mask=mcol[None, :] & mask_d[:, None], other=0.0)
        cf = ct.to(ACC)
        cn += tl.sum(cf * cf, axis=0)
        if CAST_BF16:
            acc = tl.dot(xt.to(tl.bfloat16), ct.to(tl.bfloat16), acc)
        elif xt.dtype == tl.float16 or xt.dtype == tl.bfloat16:
            acc = tl.dot(xt, ct, acc)
        else:
            acc = tl.dot(xt.to(ACC), cf, acc, input_precision=DOT_PREC, out_dtype=ACC)
    dist = tl.maximum(xn[:, None] + cn[None, :] - 2.0 * acc, 0.0)
    dist = tl.where(mcol[None, :], dist, float("inf"))
    cid = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32) + tl.where(mcol, cols, NONE)[None, :]
    return dist, cid


@triton.jit
def _soft_fwd_kernel(X, MU, CLS, OUT, IDX, N, C, D_FEAT, L, TOP_D, scale,
                     sxn, sxd, smc, smd,
                     ACC: tl.constexpr, DOT_PREC: tl.constexpr, CAST_BF16: tl.constexpr, ALL: tl.constexpr,
                     RECOMPUTE: tl.constexpr, ONE_TILE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_L: tl.constexpr, DP: tl.constexpr, INIT: tl.constexpr, NONE: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mrow = rows < N
    slot = tl.arange(0, DP)
    real = slot < TOP_D
    offs_d = tl.arange(0, BLOCK_D)
    zero_md = tl.zeros((BLOCK_M, DP), dtype=tl.int32)
    if ALL:
        ti = zero_md + tl.where(real, slot, -1)[None, :]
    else:
        inf_md = tl.zeros((BLOCK_M, DP), dtype=ACC) + float("inf")
        tv = tl.where(real[None, :], inf_md, -inf_md)  # padding slots (-inf) are never evicted
        ti = zero_md + tl.where(real, INIT + slot, -1)[None, :]
        xn = tl.zeros((BLOCK_M,), dtype=ACC)
        for d0 in range(0, D_FEAT, BLOCK_D):
            dd = d0 + offs_d
            xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd,
                         mask=mrow[:, None] & (dd < D_FEAT)[None, :], other=0.0).to(ACC)
            xn += tl.sum(xt * xt, axis=1)
        if ONE_TILE:  # every center in one tile: TOP_D row-wise (value, index) minima, no merging
            dist, cid = _distance_tile(X, MU, rows, mrow, xn, 0, C, D_FEAT, sxn, sxd, smc, smd,
                                       ACC, DOT_PREC, CAST_BF16, BLOCK_M, BLOCK_N, BLOCK_D, NONE)
            for s in range(0, TOP_D):
                cv, ci = _lexmin(dist, cid, NONE)
                put = slot[None, :] == s
                tv = tl.where(put, cv[:, None], tv)
                ti = tl.where(put, ci[:, None], ti)
                taken = cid == ci[:, None]
                dist = tl.where(taken, float("inf"), dist)
                cid = tl.where(taken, NONE, cid)
        else:
            for c0 in range(0, C, BLOCK_N):
                dist, cid = _distance_tile(X, MU, rows, mrow, xn, c0, C, D_FEAT, sxn, sxd, smc, smd,
                                           ACC, DOT_PREC, CAST_BF16, BLOCK_M, BLOCK_N, BLOCK_D, NONE)
                cv, ci = _lexmin(dist, cid, NONE)
                wv, wi = _lexmax(tv, ti)
                need = ((cv < wv) | ((cv == wv) & (ci < wi))) & mrow
                todo = tl.sum(need.to(tl.int32), axis=0)
                while todo > 0:
                    evict = need[:, None] & (tv == wv[:, None]) & (ti == wi[:, None])
                    tv = tl.where(evict, cv[:, None], tv)
                    ti = tl.where(evict, ci[:, None], ti)
                    taken = need[:, None] & (cid == ci[:, None])
                    dist = tl.where(taken, float("inf"), dist)
                    cid = tl.where(taken, NONE, cid)
                    cv, ci = _lexmin(dist, cid, NONE)
                    wv, wi = _lexmax(tv, ti)
                    need = ((cv < wv) | ((cv == wv) & (ci < wi))) & mrow
                    todo = tl.sum(need.to(tl.int32), axis=0)
    ti = tl.where(mrow[:, None] & real[None, :], ti, 0)
    tl.store(IDX + rows[:, None] * TOP_D + slot[None, :], ti.to(tl.int64), mask=mrow[:, None] & real[None, :])

    if RECOMPUTE:
        tl.debug_barrier()  # the IDX rows just stored are read back by other threads
        dv = _exact_selected(X, MU, IDX, rows, mrow, slot, TOP_D, D_FEAT, sxn, sxd, smc, smd,
                             ACC, BLOCK_M, BLOCK_D, DP)
    else:  # the selection's own distances (float32-exact products): no gather of the D centers
        dv = tv
    z = tl.where(real[None, :], -scale * dv, float("-inf"))
    zmax = tl.max(z, axis=1)
    zsafe = tl.where(zmax > float("-inf"), zmax, 0.0)
    lse = zsafe + tl.log(tl.sum(tl.exp(z - zsafe[:, None]), axis=1))  # -inf when every z is -inf
    sc = tl.load(CLS + ti, mask=mrow[:, None] & real[None, :], other=0).to(tl.int32)
    for l0 in range(0, L, BLOCK_L):
        lc = l0 + tl.arange(0, BLOCK_L)
        cm = tl.zeros((BLOCK_M, BLOCK_L), dtype=ACC) + float("-inf")
        cs = tl.zeros((BLOCK_M, BLOCK_L), dtype=ACC)
        for s in range(0, TOP_D):
            zs = tl.sum(tl.where(slot[None, :] == s, z, 0.0), axis=1)
            ks = _column(sc, slot, s)
            hit = (ks[:, None] == lc[None, :]) & (zs[:, None] > float("-inf"))
            m_new = tl.where(hit, tl.maximum(cm, zs[:, None]), cm)
            upd = cs * tl.exp(cm - m_new) + tl.exp(zs[:, None] - m_new)
            cs = tl.where(hit, upd, cs)
            cm = m_new
        present = cm > float("-inf")
        res = tl.where(present, cm + tl.log(tl.where(present, cs, 1.0)) - lse[:, None], float("-inf"))
        tl.store(OUT + rows[:, None] * L + lc[None, :], res, mask=mrow[:, None] & (lc < L)[None, :])


@triton.jit
def _soft_bwd_kernel(G, OUT, IDX, X, MU, CLS, GX, GMU, COEF, N, D_FEAT, L, TOP_D, scale,
                     sxn, sxd, smc, smd,
                     ACC: tl.constexpr, ATOMIC_GMU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_L: tl.constexpr, DP: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mrow = rows < N
    slot = tl.arange(0, DP)
    real = slot < TOP_D
    m2 = mrow[:, None] & real[None, :]
    ti = tl.load(IDX + rows[:, None] * TOP_D + slot[None, :], mask=m2, other=0)
    dv = _exact_selected(X, MU, IDX, rows, mrow, slot, TOP_D, D_FEAT, sxn, sxd, smc, smd,
                         ACC, BLOCK_M, BLOCK_D, DP)
    z = tl.where(real[None, :], -scale * dv, float("-inf"))
    zmax = tl.max(z, axis=1)
    zsafe = tl.where(zmax > float("-inf"), zmax, 0.0)
    lse = zsafe + tl.log(tl.sum(tl.exp(z - zsafe[:, None]), axis=1))
    gsum = tl.zeros((BLOCK_M,), dtype=ACC)
    for l0 in range(0, L, BLOCK_L):
        lc = l0 + tl.arange(0, BLOCK_L)
        ml = mrow[:, None] & (lc < L)[None, :]
        o = tl.load(OUT + rows[:, None] * L + lc[None, :], mask=ml, other=float("-inf"))
        g = tl.load(G + rows[:, None] * L + lc[None, :], mask=ml, other=0.0)
        gsum += tl.sum(tl.where(o > float("-inf"), g, 0.0), axis=1)
    sc = tl.load(CLS + ti, mask=m2, other=0)
    oc = tl.load(OUT + rows[:, None] * L + sc, mask=m2, other=float("-inf"))
    gc = tl.load(G + rows[:, None] * L + sc, mask=m2, other=0.0)
    ok = m2 & (z > float("-inf")) & (oc > float("-inf"))
    zl = tl.where(ok, z - lse[:, None], 0.0)
    a = -2.0 * scale * (gc * tl.exp(zl - tl.where(ok, oc, 0.0)) - gsum[:, None] * tl.exp(zl))
    a = tl.where(ok, a, 0.0)  # 2 * dL/dd_j
    if not ATOMIC_GMU:  # grad_mu comes from _soft_bwd_centers_kernel
        tl.store(COEF + rows[:, None] * TOP_D + slot[None, :], a, mask=m2)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D_FEAT, BLOCK_D):
        dd = d0 + offs_d
        md = mrow[:, None] & (dd < D_FEAT)[None, :]
        xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd, mask=md, other=0.0).to(ACC)
        gx = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
        for s in range(0, TOP_D):
            js = _column(ti, slot, s)
            a_s = tl.sum(tl.where(slot[None, :] == s, a, 0.0), axis=1)
            mt = tl.load(MU + js[:, None] * smc + dd[None, :] * smd, mask=md, other=0.0).to(ACC)
            t = a_s[:, None] * (xt - mt)
            gx += t
            if ATOMIC_GMU:
                tl.atomic_add(GMU + js[:, None] * D_FEAT + dd[None, :], -t, mask=md & (a_s != 0.0)[:, None])
        tl.store(GX + rows[:, None] * D_FEAT + dd[None, :], gx, mask=md)


@triton.jit
def _soft_bwd_centers_kernel(COEF, IDX, X, MU, GMU, N, C, D_FEAT, TOP_D, ROWS, sxn, sxd, smc, smd,
                             ACC: tl.constexpr, DOT_PREC: tl.constexpr, SPLIT: tl.constexpr,
                             BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_mu_j = -sum_{i: j in S_i} a_ij (f_i - mu_j) = colsum_j(A) mu_j - (A^T F)_j, center-major.

    Program (center tile, dim tile, row split): the [BLOCK_N, BLOCK_C] slice of the sparse
    A [N, C] (A_ij = a_ij for the selected j) is built from COEF/IDX in registers, then
    A^T F accumulates through tl.dot; a row split adds its partial tile atomically.
    """
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_n = tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mcol = cols < C
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mdim = dd < D_FEAT
    acc = tl.zeros((BLOCK_C, BLOCK_D), dtype=ACC)
    csum = tl.zeros((BLOCK_C,), dtype=ACC)
    r_lo = pid_n * ROWS
    r_hi = tl.minimum(r_lo + ROWS, N)
    for r0 in range(r_lo, r_hi, BLOCK_N):
        rows = (r0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        mrow = rows < r_hi
        a_t = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC)
        for s in range(0, TOP_D):
            j = tl.load(IDX + rows * TOP_D + s, mask=mrow, other=-1)
            w = tl.load(COEF + rows * TOP_D + s, mask=mrow, other=0.0)
            a_t = tl.where(j[:, None] == cols[None, :], w[:, None], a_t)  # a row selects j once
        xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd, mask=mrow[:, None] & mdim[None, :],
                     other=0.0).to(ACC)
        acc = tl.dot(tl.trans(a_t), xt, acc, input_precision=DOT_PREC, out_dtype=ACC)
        csum += tl.sum(a_t, axis=0)
    m2 = mcol[:, None] & mdim[None, :]
    mu = tl.load(MU + cols[:, None].to(tl.int64) * smc + dd[None, :] * smd, mask=m2, other=0.0).to(ACC)
    g = csum[:, None] * mu - acc
    ptrs = GMU + cols[:, None].to(tl.int64) * D_FEAT + dd[None, :]
    if SPLIT == 1:
        tl.store(ptrs, g, mask=m2)
    else:
        tl.atomic_add(ptrs, g, mask=m2)


# Largest C for the center-major grad_mu pass: its one-hot build costs N * C * D compares
# per dim tile, which beats the contended atomics at ClusTR sizes (C = 10 classes x 20) but
# not at C in the thousands. Above it the row kernel adds grad_mu atomically.
CENTER_MAJOR_MAX_C = 512


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _block_m(dp: int, n: int, acc: torch.dtype) -> int:
    if interpreted():  # numpy per op: few large programs
        return max(16, min(128, _pow2(n)))
    if acc == torch.float64:  # the float64 tl.dot wants 64x64 tiles (as in pairwise_sqdist)
        return 64
    return max(16, min(64, 2048 // dp))


def soft_cluster_logits(feats, centers, center_classes, num_classes: int, variance: float, top_d: int,
                        precision: int = 0):
    """feats [N,d], centers [C,d], center_classes [C] int64 -> (out [N,L] acc dtype, idx [N,D] int64)."""
    N, D_FEAT = feats.shape
    C = centers.shape[0]
    acc = acc_dtype(feats.dtype)
    out = torch.empty((N, num_classes), device=feats.device, dtype=acc)
    idx = torch.empty((N, top_d), device=feats.device, dtype=torch.int64)
    if N == 0:
        return out, idx
    if centers.dtype != feats.dtype:
        centers = centers.to(feats.dtype)
    cls = center_classes.to(torch.int64).contiguous()
    dp = _pow2(top_d)
    bm = _block_m(dp, N, acc)
    one_tile = top_d < C and C <= ONE_TILE_MAX_C and (acc == torch.float32 or interpreted())
    if interpreted():
        meta, launch = dict(BLOCK_N=max(16, _pow2(C)) if one_tile else 64, BLOCK_D=64, BLOCK_L=64), {}
    elif acc == torch.float64:
        meta, launch = dict(BLOCK_N=64, BLOCK_D=16, BLOCK_L=32), dict(num_warps=4, num_stages=2)
    elif one_tile:  # [64, <=256] distance tile: 8 warps keep it in registers
        bm = 64
        meta, launch = dict(BLOCK_N=max(16, _pow2(C)), BLOCK_D=32, BLOCK_L=32), dict(num_warps=8, num_stages=3)
    else:
        meta, launch = dict(BLOCK_N=64, BLOCK_D=32, BLOCK_L=32), dict(num_warps=4, num_stages=3)
    grid = (triton.cdiv(N, bm),)
    _soft_fwd_kernel[grid](
        feats, centers, cls, out, idx, N, C, D_FEAT, num_classes, top_d, 0.5 / variance,
        feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1),
        ACC=tl_dtype(acc), DOT_PREC=dot_precision(acc, precision),
        CAST_BF16=(precision == 2 and feats.dtype == torch.float32 and not interpreted()),
        ALL=(top_d == C), RECOMPUTE=recompute_selected(top_d == C, precision, acc), ONE_TILE=one_tile,
        BLOCK_M=bm, DP=dp, INIT=_INIT, NONE=_NONE, **meta, **launch)
    return out, idx


def recompute_selected(all_centers: bool, precision: int, acc: torch.dtype) -> bool:
    """Whether the forward recomputes the D selected distances by direct differences.

    "highest" keeps the selection's own distances: 3xTF32 (IEEE in float64 and under the
    interpreter) products are float32-exact, and the gather of D center rows per row (N*D*d
    loads) is skipped. "high"/"medium" select with reduced-precision products and so recompute;
    so does top_d = C, whose selection computes no distances. ``FORCE_RECOMPUTE`` forces it.
    """
    return FORCE_RECOMPUTE or all_centers or (precision != 0 and acc != torch.float64)


FORCE_RECOMPUTE = False  # benchmarks/ab_triton.py times both forms

# Largest C whose distances sit in one register tile per row block (float32): the selection is
# then TOP_D row-wise minima, instead of a data-dependent merge of each 64-center tile into the
# running list (the loop for larger C).
ONE_TILE_MAX_C = 256


def soft_cluster_logits_backward(grad, out, idx, feats, centers, center_classes, variance: float):
    """grad [N,L] -> (grad_feats [N,d], grad_centers [C,d]) in the inputs' dtypes."""
    N, D_FEAT = feats.shape
    C = centers.shape[0]
    top_d = idx.shape[1]
    acc = acc_dtype(feats.dtype)
    gx = torch.empty((N, D_FEAT), device=feats.device, dtype=acc)
    gmu = torch.zeros((C, D_FEAT), device=feats.device, dtype=acc)
    if N == 0 or D_FEAT == 0:
        return gx.zero_().to(feats.dtype), gmu.to(centers.dtype)
    dp = _pow2(top_d)
    bm = _block_m(dp, N, acc)
    if interpreted():
        meta, launch = dict(BLOCK_D=64, BLOCK_L=64), {}
    else:
        meta, launch = dict(BLOCK_D=64, BLOCK_L=32), dict(num_warps=4)
    idx = idx.contiguous()
    center_major = C <= CENTER_MAJOR_MAX_C and not FORCE_ATOMIC_GMU
    coef = torch.empty((N, top_d) if center_major else (0, top_d), device=feats.device, dtype=acc)
    _soft_bwd_kernel[(triton.cdiv(N, bm),)](
        grad.to(acc).contiguous(), out.contiguous(), idx, feats, centers,
        center_classes.to(torch.int64).contiguous(), gx, gmu, coef, N, D_FEAT, out.shape[1], top_d, 0.5 / variance,
        feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1),
        ACC=tl_dtype(acc), ATOMIC_GMU=not center_major, BLOCK_M=bm, DP=dp, **meta, **launch)
    if center_major:
        _centers_backward(coef, idx, feats, centers, gmu, acc)
    return gx.to(feats.dtype), gmu.to(centers.dtype)


FORCE_ATOMIC_GMU = False  # benchmarks/ab_triton.py times both forms


def _centers_backward(coef, idx, feats, centers, gmu, acc):
    """grad_mu into ``gmu`` (zeros) by the center-major kernel; rows split so that ~2 programs run per SM."""
    N, D_FEAT = feats.shape
    C, top_d = centers.shape[0], idx.shape[1]
    if interpreted():
        bc, bn, bd, launch = 32, 32, 32, {}
    elif acc == torch.float64:
        bc, bn, bd, launch = 64, 64, 64, dict(num_warps=4)
    else:
        bc, bn, bd, launch = 64, 64, 64, dict(num_warps=4, num_stages=2)
    tiles = triton.cdiv(C, bc) * triton.cdiv(D_FEAT, bd)
    programs = 1 if interpreted() else 2 * torch.cuda.get_device_properties(feats.device).multi_processor_count
    split = max(1, min(triton.cdiv(N, bn), triton.cdiv(programs, tiles)))
    rows = triton.cdiv(triton.cdiv(N, split), bn) * bn
    split = triton.cdiv(N, rows)
    _soft_bwd_centers_kernel[(triton.cdiv(C, bc), triton.cdiv(D_FEAT, bd), split)](
        coef, idx, feats, centers, gmu, N, C, D_FEAT, top_d, rows,
        feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1),
        ACC=tl_dtype(acc), DOT_PREC=dot_precision(acc, 0), SPLIT=split,
        BLOCK_C=bc, BLOCK_N=bn, BLOCK_D=bd, **launch)
