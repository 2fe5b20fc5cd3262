"""Triton kernels for ``soft_cluster_logits`` (ClusTR Eq. 4 over the top-D nearest centers).

Forward, one program per BLOCK_M rows:
1. distance tiles ``[BLOCK_M, BLOCK_N]`` from ``tl.dot`` (3xTF32 for "highest" and "high":
   _common.DOT_PRECISION; bf16 for "medium"), merged into a running top-D list held in registers:
   while a tile holds a pair (value, index) lexicographically below the list's worst,
   the tile's best replaces it (so ties go to the lower index, as a stable sort);
2. for reduced-precision products (and top_d = C) the D selected distances recomputed exactly by
   direct differences (float32, or float64 for float64 inputs); "highest" keeps the
   selection's float32-exact (3xTF32) distances;
3. ``z = -d / (2 sigma^2)`` and ``lse`` = logsumexp of z over the selection; ``out [N, L]``
   starts at -inf (absent classes) and each selected center adds ``z - lse`` to its class
   by a logaddexp, in slot order.
It writes ``out`` and the selected indices ``idx [N, D]`` (and ``z - lse`` in an [N, D]
scratch); no [N, C] buffer.

Backward, one program per BLOCK_M rows: recompute the D distances, the coefficients
``a_j = -s (g_{c_j} exp(z_j - Z - out_{c_j}) - G exp(z_j - Z))`` (G = sum of the
gradient over present classes; kept in an [N, D] scratch), then ``grad_f = 2 sum_j a_j
(f - mu_j)``. The center gradient ``grad_mu_j = -2 sum_i a_ij (f_i - mu_j)`` comes either from
atomic adds in the kernel or, when C <= BWD_DENSE_MAX_RATIO * D, after it from dense products
``colsum(A) mu - A^T F`` over row chunks of the coefficients scattered into ``A [rows, C]``.
"""
import torch
import triton
import triton.language as tl

from clustr_fast._validate import acc_dtype

from . import _common, triton_interpreted
from ._common import dot_precision, logaddexp, mma, split_launch, tl_dtype

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
def _exact_selected(X, MU, rows, mrow, ti, slot, TOP_D, D_FEAT, sxn, sxd, smc, smd,
                    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DP: tl.constexpr):
    """[BLOCK_M, DP] squared distances ||f_i - mu_{ti[i,s]}||^2 by direct differences."""
    dv = tl.zeros((BLOCK_M, DP), dtype=ACC)
    offs_d = tl.arange(0, BLOCK_D)
    for s in range(0, TOP_D):
        js = _column(ti, slot, s).to(tl.int64)
        js = tl.where(mrow, js, 0)
        acc2 = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)  # summed over d once: no shuffles per chunk
        for d0 in range(0, D_FEAT, BLOCK_D):
            dd = d0 + offs_d
            m2 = mrow[:, None] & (dd < D_FEAT)[None, :]
            xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd, mask=m2, other=0.0).to(ACC)
            mt = tl.load(MU + js[:, None] * smc + dd[None, :] * smd, mask=m2, other=0.0).to(ACC)
            diff = xt - mt
            acc2 += diff * diff
        ds = tl.sum(acc2, axis=1)
        dv = tl.where(slot[None, :] == s, ds[:, None], dv)
    return dv


@triton.jit
def _soft_fwd_kernel(X, MU, CN, CLS, OUT, IDX, ZBUF, N, C, D_FEAT, L, TOP_D, scale,
                     sxn, sxd, smc, smd, szn,
                     ACC: tl.constexpr, DOT_PREC: tl.constexpr, CAST_BF16: tl.constexpr, ALL: tl.constexpr,
                     RECOMPUTE: tl.constexpr,
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
        xsq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)  # summed over d once: no shuffles per chunk
        for d0 in range(0, D_FEAT, BLOCK_D):
            dd = d0 + offs_d
            xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd,
                         mask=mrow[:, None] & (dd < D_FEAT)[None, :], other=0.0).to(ACC)
            xsq += xt * xt
        xn = tl.sum(xsq, axis=1)
        for c0 in range(0, C, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            mcol = cols < C
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
            cn = tl.load(CN + cols, mask=mcol, other=0.0)  # ||mu||^2, once per call, not per row block
            for d0 in range(0, D_FEAT, BLOCK_D):
                dd = d0 + offs_d
                mask_d = dd < D_FEAT
                xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd,
                             mask=mrow[:, None] & mask_d[None, :], other=0.0)
                ct = tl.load(MU + cols[None, :].to(tl.int64) * smc + dd[:, None] * smd,
                             mask=mcol[None, :] & mask_d[:, None], other=0.0)
                cf = ct.to(ACC)
                if CAST_BF16:
                    acc = tl.dot(xt.to(tl.bfloat16), ct.to(tl.bfloat16), acc)
                elif xt.dtype == tl.float16 or xt.dtype == tl.bfloat16:
                    acc = tl.dot(xt, ct, acc)
                else:
                    acc = mma(xt.to(ACC), cf, acc, DOT_PREC)
            dist = tl.maximum(xn[:, None] + cn[None, :] - 2.0 * acc, 0.0)
            dist = tl.where(mcol[None, :], dist, float("inf"))
            cid = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32) + tl.where(mcol, cols, NONE)[None, :]
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
        dv = _exact_selected(X, MU, rows, mrow, ti, slot, TOP_D, D_FEAT, sxn, sxd, smc, smd,
                             ACC, BLOCK_M, BLOCK_D, DP)
    else:  # the selection's own distances (float32-exact products): no gather of the D centers
        dv = tv
    z = tl.where(real[None, :], -scale * dv, float("-inf"))
    zmax = tl.max(z, axis=1)
    zsafe = tl.where(zmax > float("-inf"), zmax, 0.0)
    lse = zsafe + tl.log(tl.sum(tl.exp(z - zsafe[:, None]), axis=1))  # -inf when every z is -inf
    # ZBUF has its own row stride szn (= TOP_D): an offset tensor shared with the IDX store would
    # stay live through the recompute (+36 registers under "high", sm_90a)
    tl.store(ZBUF + rows[:, None] * szn + slot[None, :], z - lse[:, None], mask=mrow[:, None] & real[None, :])
    _class_logits(OUT, IDX, CLS, ZBUF, rows, mrow, L, TOP_D, szn, ACC, BLOCK_M, BLOCK_L)


@triton.jit
def _class_logits(OUT, IDX, CLS, ZBUF, rows, mrow, L, TOP_D, szn,
                  ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr):
    """out[i, c] = log sum_{s: class_s = c} exp(zbuf[i, s]) from the rows' IDX and ZBUF (z - lse).

    The row is set to -inf, then each selected slot, in slot order, adds itself to its class by
    a logaddexp in memory: O(D) per row, where a sweep of [BLOCK_M, BLOCK_L] accumulators per slot
    would take O(D * L) exps.
    """
    for l0 in range(0, L, BLOCK_L):
        lc = l0 + tl.arange(0, BLOCK_L)
        tl.store(OUT + rows[:, None] * L + lc[None, :], tl.zeros((BLOCK_M, BLOCK_L), dtype=ACC) + float("-inf"),
                 mask=mrow[:, None] & (lc < L)[None, :])
    tl.debug_barrier()  # IDX, ZBUF and the -inf rows are visible to every thread of the program
    for s in range(0, TOP_D):
        js = tl.load(IDX + rows * TOP_D + s, mask=mrow, other=0)
        ks = tl.load(CLS + js, mask=mrow, other=0)
        zs = tl.load(ZBUF + rows * szn + s, mask=mrow, other=float("-inf"))
        ok = mrow & (zs > float("-inf"))  # also drops NaN (a row whose every z is -inf)
        ptr = OUT + rows * L + ks
        cur = tl.load(ptr, mask=ok, other=float("-inf"))
        tl.store(ptr, logaddexp(cur, zs), mask=ok)
        tl.debug_barrier()  # the next slot of a row may name the same class


@triton.jit
def _soft_bwd_kernel(G, OUT, IDX, X, MU, CLS, GX, GMU, ABUF, N, D_FEAT, L, TOP_D, scale,
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
    dv = _exact_selected(X, MU, rows, mrow, ti, slot, TOP_D, D_FEAT, sxn, sxd, smc, smd,
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
    # Columns of `a` and of the selection are read back from memory in the loop below: taking
    # them out of the [BLOCK_M, DP] registers costs two cross-lane sums per (chunk, slot).
    tl.store(ABUF + rows[:, None] * TOP_D + slot[None, :], a, mask=m2)
    tl.debug_barrier()
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D_FEAT, BLOCK_D):
        dd = d0 + offs_d
        md = mrow[:, None] & (dd < D_FEAT)[None, :]
        xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd, mask=md, other=0.0).to(ACC)
        gx = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
        for s in range(0, TOP_D):
            js = tl.load(IDX + rows * TOP_D + s, mask=mrow, other=0)
            a_s = tl.load(ABUF + rows * TOP_D + s, mask=mrow, other=0.0)
            mt = tl.load(MU + js[:, None] * smc + dd[None, :] * smd, mask=md, other=0.0).to(ACC)
            t = a_s[:, None] * (xt - mt)
            gx += t
            if ATOMIC_GMU:  # else the launcher forms grad_mu from ABUF by dense products
                tl.atomic_add(GMU + js[:, None] * D_FEAT + dd[None, :], -t, mask=md & (a_s != 0.0)[:, None],
                              sem="relaxed")
        tl.store(GX + rows[:, None] * D_FEAT + dd[None, :], gx, mask=md)


# GPU launch configurations (float32/16 inputs; see split_launch). The forward runs 2 stages (faster
# than 3 at 50k x 200 x 512, D=20); the backward 8 warps (with 4 it spills: tools/sass_stats.py).
FWD_GPU_FP32 = dict(BLOCK_N=64, BLOCK_D=32, BLOCK_L=32, num_warps=4, num_stages=2)
BWD_GPU = dict(BLOCK_D=64, BLOCK_L=32, num_warps=8)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _block_m(dp: int, n: int, acc: torch.dtype) -> int:
    if triton_interpreted():  # numpy per op: few large programs
        return max(16, min(128, _pow2(n)))
    if acc == torch.float64:  # the float64 tl.dot wants 64x64 tiles (as in pairwise_sqdist)
        return 64
    return max(16, min(FWD_ROWS_MAX, FWD_LIST_ELEMS // dp))


# Rows per forward program on the GPU: FWD_LIST_ELEMS // DP (the top-D list's [BLOCK_M, DP]
# entries), at most FWD_ROWS_MAX. Fewer rows make the merge loop run fewer times per tile (it
# runs until the row that needs most insertions has them) but give the tensor cores thinner tiles.
FWD_LIST_ELEMS = 2048
FWD_ROWS_MAX = 64


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
    if triton_interpreted():
        meta, launch = dict(BLOCK_N=64, BLOCK_D=64, BLOCK_L=64), {}
    elif acc == torch.float64:
        meta, launch = dict(BLOCK_N=64, BLOCK_D=16, BLOCK_L=32), dict(num_warps=4, num_stages=2)
    else:
        meta, launch = split_launch(FWD_GPU_FP32)
    cn = centers.to(acc).square().sum(1).contiguous()
    zbuf = torch.empty((N, top_d), device=feats.device, dtype=acc)  # z - lse of the selection
    grid = (triton.cdiv(N, bm),)
    prec = dot_precision(acc, precision)
    _soft_fwd_kernel[grid](
        feats, centers, cn, cls, out, idx, zbuf, N, C, D_FEAT, num_classes, top_d, 0.5 / variance,
        feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1), zbuf.stride(0),
        ACC=tl_dtype(acc), DOT_PREC=prec,
        CAST_BF16=(precision == 2 and feats.dtype == torch.float32 and not triton_interpreted()),
        ALL=(top_d == C), RECOMPUTE=recompute_selected(top_d == C, precision, acc),
        BLOCK_M=bm, DP=dp, INIT=_INIT, NONE=_NONE, **meta, **launch)
    return out, idx


def recompute_selected(all_centers: bool, precision: int, acc: torch.dtype) -> bool:
    """Whether the forward recomputes the D selected distances by direct differences.

    A selection by float32-exact products ("highest", and "high" while _common.DOT_PRECISION
    maps it to 3xTF32; IEEE in float64 and under the interpreter) keeps its own distances, which
    skips the gather of D center rows per row (N*D*d loads, half of the forward's time).
    Reduced-precision products recompute, as does top_d = C, whose selection computes no distances.
    """
    if all_centers:
        return True
    if acc == torch.float64:
        return False
    exact = precision == 0 or (precision == 1 and _common.DOT_PRECISION[1] == "tf32x3")
    return not exact


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
    abuf = torch.empty((N, top_d), device=feats.device, dtype=acc)  # the coefficients a_ij
    if triton_interpreted():
        meta, launch = dict(BLOCK_D=64, BLOCK_L=64), {}
    else:
        meta, launch = split_launch(BWD_GPU)
    idx = idx.contiguous()
    dense = dense_center_grad(C, top_d, feats.device)
    _soft_bwd_kernel[(triton.cdiv(N, bm),)](
        grad.to(acc).contiguous(), out.contiguous(), idx, feats, centers,
        center_classes.to(torch.int64).contiguous(), gx, gmu, abuf, N, D_FEAT, out.shape[1], top_d, 0.5 / variance,
        feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1),
        ACC=tl_dtype(acc), ATOMIC_GMU=not dense, BLOCK_M=bm, DP=dp, **meta, **launch)
    if dense:
        _center_grad_by_products(gmu, abuf, idx, feats, centers)
    return gx.to(feats.dtype), gmu.to(centers.dtype)


# The center gradient grad_mu_j = -sum_i a_ij (f_i - mu_j) = colsum(A)_j mu_j - (A^T F)_j, with
# a_ij = 2 dL/dd_ij (the kernel's ABUF) and A [N, C] those scattered by idx, is formed by dense
# products over row chunks of A (at most BWD_DENSE_CHUNK entries each) when
# C <= BWD_DENSE_MAX_RATIO * D: then the products' 2 N C d flops cost less than N D d atomic adds
# into grad_mu. Deterministic, unlike the atomics.
BWD_DENSE_MAX_RATIO = 16
BWD_DENSE_CHUNK = 1 << 25  # entries of one row chunk of A (128 MiB in float32)


def dense_center_grad(num_centers: int, top_d: int, device: torch.device) -> bool:
    """Whether the backward forms grad_mu by dense products (else atomic adds in the kernel).

    Always under ``torch.use_deterministic_algorithms(True)`` (the atomics' order is not; the
    products then follow PyTorch's float32 matmul precision, whatever it is).
    Else for C <= BWD_DENSE_MAX_RATIO * D and, on CUDA, only while float32 products are full
    precision (``torch.get_float32_matmul_precision() == "highest"``, PyTorch's default):
    cuBLAS would otherwise round them to TF32.
    """
    if torch.are_deterministic_algorithms_enabled():
        return True
    if num_centers > BWD_DENSE_MAX_RATIO * top_d:
        return False
    return device.type != "cuda" or torch.get_float32_matmul_precision() == "highest"


def _center_grad_by_products(gmu, abuf, idx, feats, centers):
    """gmu [C, d] (zeros, accumulation dtype) <- colsum(A) mu - A^T F; abuf, idx [N, D]."""
    N, C = feats.shape[0], centers.shape[0]
    colsum = torch.zeros((C,), device=gmu.device, dtype=gmu.dtype)
    rows = max(1, BWD_DENSE_CHUNK // C)
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        a = torch.zeros((r1 - r0, C), device=gmu.device, dtype=gmu.dtype).scatter_(1, idx[r0:r1], abuf[r0:r1])
        gmu.addmm_(a.t(), feats[r0:r1].to(gmu.dtype), alpha=-1.0)
        colsum += a.sum(0)
    gmu.addcmul_(colsum[:, None], centers.to(gmu.dtype))
