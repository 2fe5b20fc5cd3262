"""Triton kernels for k-means: fused assignment, Lloyd update, k-means++ seeding.

assign (dense): one program owns BLOCK_M rows and sweeps all K centers in
    BLOCK_N tiles; each tile's ``||c||^2 - 2 x.c`` is reduced to a running
    (min, first argmin) in registers, so no [N, K] buffer exists.
    sqdist = max(||x||^2 + min, 0). fp32 products: 3xTF32 (_common.DOT_PRECISION); bf16 for "medium".
assign (grouped): row i sees only centers [g_i*k, (g_i+1)*k), by explicit differences.
update: per-cluster sums by atomics (summed per row block through one-hot masks first
    when k <= 32), or, when deterministic, an ordered sum over each cluster's
    rows after a stable sort by label.
k-means++ (segments [offsets[g], offsets[g+1]) of x, all groups in every launch):
    per step ``sample`` (D^2 draws from block sums, then inside one block),
    ``eval`` (distances of the T candidates: the only read of x; kept in dc),
    ``select`` (least potential per group), ``update`` (closest = min(closest,
    dc[best]) and the block sums of the next draw).
"""
import torch
import triton
import triton.language as tl

from clustr_fast._validate import acc_dtype

from . import triton_interpreted
from ._common import dot_precision, mma, split_launch, tl_dtype


# --------------------------------------------------------------------------- assign


@triton.jit
def _assign_dense_kernel(X, C, CN, LAB, SQ, N, K, D, sxn, sxd, scn, scd,
                         ACC: tl.constexpr, DOT_PREC: tl.constexpr, CAST_BF16: tl.constexpr,
                         USE_DOT: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    offs_d = tl.arange(0, BLOCK_D)
    xsq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)  # summed over d once: no shuffles per chunk
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        xt = tl.load(X + offs_m[:, None] * sxn + dd[None, :] * sxd,
                     mask=mask_m[:, None] & (dd < D)[None, :], other=0.0).to(ACC)
        xsq += xt * xt
    xn = tl.sum(xsq, axis=1)
    best = tl.full((BLOCK_M,), float("inf"), dtype=ACC)
    arg = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_N):
        offs_n = k0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < K
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            mask_d = dd < D
            xt = tl.load(X + offs_m[:, None] * sxn + dd[None, :] * sxd,
                         mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            ct = tl.load(C + offs_n[None, :] * scn + dd[:, None] * scd,
                         mask=mask_n[None, :] & mask_d[:, None], other=0.0)
            if not USE_DOT:  # float64: products on the FMA units
                acc += tl.sum(xt.to(ACC)[:, :, None] * ct.to(ACC)[None, :, :], axis=1)
            elif CAST_BF16:
                acc = tl.dot(xt.to(tl.bfloat16), ct.to(tl.bfloat16), acc)
            elif xt.dtype == tl.float16 or xt.dtype == tl.bfloat16:
                acc = tl.dot(xt, ct, acc)
            else:
                acc = mma(xt.to(ACC), ct.to(ACC), acc, DOT_PREC)
        cn = tl.load(CN + offs_n, mask=mask_n, other=0.0)
        v = cn[None, :] - 2.0 * acc
        v = tl.where(mask_n[None, :], v, float("inf"))
        tmin = tl.min(v, axis=1)
        targ = tl.argmin(v, axis=1, tie_break_left=True).to(tl.int32)
        upd = tmin < best
        best = tl.where(upd, tmin, best)
        arg = tl.where(upd, targ + k0, arg)
    tl.store(LAB + offs_m, arg.to(tl.int64), mask=mask_m)
    tl.store(SQ + offs_m, tl.maximum(xn + best, 0.0), mask=mask_m)


@triton.jit
def _assign_grouped_kernel(X, C, GRP, LAB, SQ, N, D, GK, sxn, sxd, scn, scd,
                           ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    offs_d = tl.arange(0, BLOCK_D)
    grp = tl.load(GRP + offs_m, mask=mask_m, other=0)
    best = tl.full((BLOCK_M,), float("inf"), dtype=ACC)
    arg = grp * GK
    for j in range(0, GK):
        crow = grp * GK + j
        acc2 = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)  # summed over d once: no shuffles per chunk
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            m2 = mask_m[:, None] & (dd < D)[None, :]
            xt = tl.load(X + offs_m[:, None] * sxn + dd[None, :] * sxd, mask=m2, other=0.0).to(ACC)
            ct = tl.load(C + crow[:, None] * scn + dd[None, :] * scd, mask=m2, other=0.0).to(ACC)
            diff = xt - ct
            acc2 += diff * diff
        dist = tl.sum(acc2, axis=1)
        upd = dist < best
        best = tl.where(upd, dist, best)
        arg = tl.where(upd, crow, arg)
    tl.store(LAB + offs_m, arg.to(tl.int64), mask=mask_m)
    tl.store(SQ + offs_m, best, mask=mask_m)


# GPU launch configuration of the dense assignment (float32/16 inputs; see split_launch): the
# fastest of those timed at 1M x 1024 x 128 (docs/decisions.md).
ASSIGN_GPU_FP32 = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_D=32, num_warps=4, num_stages=3)


def kmeans_assign(x, centers, precision=0, groups=None, group_k=0):
    """x [N,d], centers [K,d] -> (labels int64 [N], sqdist [N] in the accumulation dtype)."""
    N, D = x.shape
    acc = acc_dtype(x.dtype)
    labels = torch.zeros(N, device=x.device, dtype=torch.int64)
    sq = torch.empty(N, device=x.device, dtype=acc)
    if N == 0:
        return labels, sq
    if groups is not None:
        groups = groups.to(torch.int64).contiguous()
        bm, bd = (32, 32) if triton_interpreted() else (64, 32)  # d chunks of 64 spill 936 B (sm_90a)
        _assign_grouped_kernel[(triton.cdiv(N, bm),)](
            x, centers, groups, labels, sq, N, D, group_k,
            x.stride(0), x.stride(1), centers.stride(0), centers.stride(1),
            ACC=tl_dtype(acc), BLOCK_M=bm, BLOCK_D=bd, num_warps=4)
        return labels, sq
    if D == 0:
        return labels, sq.zero_()
    cn = centers.to(acc).square().sum(1).contiguous()
    if triton_interpreted():
        meta, launch = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=32), {}
    elif acc == torch.float64:
        meta, launch = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=8), dict(num_warps=4, num_stages=2)
    else:
        meta, launch = split_launch(ASSIGN_GPU_FP32)
    prec = dot_precision(acc, precision)
    _assign_dense_kernel[(triton.cdiv(N, meta["BLOCK_M"]),)](
        x, centers, cn, labels, sq, N, centers.shape[0], D,
        x.stride(0), x.stride(1), centers.stride(0), centers.stride(1),
        ACC=tl_dtype(acc), DOT_PREC=prec,
        CAST_BF16=(precision == 2 and x.dtype == torch.float32 and not triton_interpreted()),
        USE_DOT=acc != torch.float64, **meta, **launch)
    return labels, sq


# --------------------------------------------------------------------------- update


@triton.jit
def _update_atomic_kernel(X, LAB, W, SUMS, CNT, WSUM, N, D, sxn, sxd,
                          HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask = mask_m[:, None] & (offs_d < D)[None, :]
    lab = tl.load(LAB + offs_m, mask=mask_m, other=0)
    xt = tl.load(X + offs_m[:, None] * sxn + offs_d[None, :] * sxd, mask=mask, other=0.0).to(ACC)
    if HAS_W:
        wr = tl.load(W + offs_m, mask=mask_m, other=0.0).to(ACC)
        xt = xt * wr[:, None]
    tl.atomic_add(SUMS + lab[:, None] * D + offs_d[None, :], xt, mask=mask, sem="relaxed")
    if pid_d == 0:
        tl.atomic_add(CNT + lab, tl.full((BLOCK_M,), 1, tl.int32), mask=mask_m, sem="relaxed")
        if HAS_W:
            tl.atomic_add(WSUM + lab, wr, mask=mask_m, sem="relaxed")


@triton.jit
def _update_smallk_kernel(X, LAB, W, SUMS, CNT, WSUM, N, D, K, sxn, sxd, ROWS,
                          HAS_W: tl.constexpr, ACC: tl.constexpr, KP: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per program: ROWS rows x BLOCK_D dims summed per cluster (one-hot products, times the row
    weights with HAS_W), then one atomic per sum.

    The float32 sums are a small IEEE tl.dot of the one-hot matrix: a [KP, BM, BD] masked
    reduction is slow on the GPU (docs/decisions.md).
    """
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    offs_k = tl.arange(0, KP)
    sums = tl.zeros((KP, BLOCK_D), dtype=ACC)
    cnt = tl.zeros((KP,), dtype=tl.int32)
    wsum = tl.zeros((KP,), dtype=ACC)
    r_start = pid_m * ROWS
    for r0 in range(r_start, r_start + ROWS, BLOCK_M):
        offs_m = r0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        lab = tl.load(LAB + offs_m, mask=mask_m, other=-1)
        onehot = (offs_k[:, None] == lab[None, :])                       # [KP, BLOCK_M]
        xt = tl.load(X + offs_m[:, None] * sxn + offs_d[None, :] * sxd,
                     mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(ACC)
        if HAS_W:
            wr = tl.load(W + offs_m, mask=mask_m, other=0.0).to(ACC)
            xt = xt * wr[:, None]
            wsum += tl.sum(tl.where(onehot, wr[None, :], 0.0), axis=1)
        if ACC == tl.float32:  # [KP, BM] one-hot times [BM, BD] rows: IEEE fp32 products, no TF32
            sums += tl.dot(onehot.to(tl.float32), xt, input_precision="ieee")
        else:
            sums += tl.sum(tl.where(onehot[:, :, None], xt[None, :, :], 0.0), axis=1)
        cnt += tl.sum(onehot.to(tl.int32), axis=1)
    mask_k = offs_k < K
    tl.atomic_add(SUMS + offs_k[:, None] * D + offs_d[None, :], sums, mask=mask_k[:, None] & mask_d[None, :],
                  sem="relaxed")
    if pid_d == 0:
        tl.atomic_add(CNT + offs_k, cnt, mask=mask_k, sem="relaxed")
        if HAS_W:
            tl.atomic_add(WSUM + offs_k, wsum, mask=mask_k, sem="relaxed")


@triton.jit
def _update_segment_kernel(X, ORDER, START, W, PREV, OUT, WOUT, D, sxn, sxd,
                           HAS_PREV: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Deterministic: the rows of cluster j (ORDER[START[j]:START[j+1]]) summed in a fixed order
    (with HAS_W each times its weight, over the cluster's weight sum, written to WOUT[j])."""
    j = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    s = tl.load(START + j)
    e = tl.load(START + j + 1)
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=ACC)
    wacc = tl.zeros((BLOCK_R,), dtype=ACC)
    for r0 in range(s, e, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < e
        rows = tl.load(ORDER + offs_r, mask=mask_r, other=0)
        xt = tl.load(X + rows[:, None] * sxn + offs_d[None, :] * sxd,
                     mask=mask_r[:, None] & mask_d[None, :], other=0.0).to(ACC)
        if HAS_W:
            wr = tl.load(W + rows, mask=mask_r, other=0.0).to(ACC)
            xt = xt * wr[:, None]
            wacc += wr
        acc += xt
    total = tl.sum(acc, axis=0)
    if HAS_W:
        cnt = tl.sum(wacc, axis=0)
        if pid_d == 0:
            tl.store(WOUT + j, cnt)
    else:
        cnt = (e - s).to(ACC)
    full = cnt > 0.0
    if ACC == tl.float32:  # IEEE division (plain fp32 `/` is approximate): equal points keep their value
        mean = tl.math.div_rn(total, tl.where(full, cnt, 1.0))
    else:
        mean = total / tl.where(full, cnt, 1.0)
    if HAS_PREV:
        keep = tl.load(PREV + j * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    else:
        keep = tl.zeros((BLOCK_D,), dtype=ACC)
    tl.store(OUT + j * D + offs_d, tl.where(full, mean, keep), mask=mask_d)


def kmeans_update(x, labels, k, prev_centers=None, deterministic=False, weights=None):
    """x [N,d], labels [N] in [0,k), weights [N] (optional) -> (centers [k,d] in the accumulation dtype,
    counts int64 [k], or with weights the weight sums [k] in the accumulation dtype)."""
    N, D = x.shape
    acc = acc_dtype(x.dtype)
    dev = x.device
    labels = labels.to(torch.int64).contiguous()
    prev = None if prev_centers is None else prev_centers.to(acc).contiguous()
    w = None if weights is None else weights.to(device=dev, dtype=acc).contiguous()
    if deterministic or D == 0:
        sorted_labels, order = torch.sort(labels, stable=True)
        start = torch.searchsorted(sorted_labels, torch.arange(k + 1, device=dev, dtype=torch.int64))
        counts = start[1:] - start[:-1]
        out = torch.empty((k, D), device=dev, dtype=acc)
        if D == 0:
            if w is None:
                return out, counts
            return out, torch.zeros(k, device=dev, dtype=acc).index_add_(0, labels, w)
        wout = torch.empty(k, device=dev, dtype=acc) if w is not None else out
        bd = 64
        _update_segment_kernel[(k, triton.cdiv(D, bd))](
            x, order, start, w if w is not None else out, prev if prev is not None else out, out, wout, D,
            x.stride(0), x.stride(1), HAS_PREV=prev is not None, HAS_W=w is not None, ACC=tl_dtype(acc),
            BLOCK_R=32, BLOCK_D=bd)
        return out, (counts if w is None else wout)
    sums = torch.zeros((k, D), device=dev, dtype=acc)
    cnt = torch.zeros(k, device=dev, dtype=torch.int32)
    wsum = torch.zeros(k, device=dev, dtype=acc) if w is not None else sums
    if N > 0:
        if k <= 32:
            kp = max(16, triton.next_power_of_2(k))  # tl.dot tiles are at least 16 wide
            bm, bd = 32, 32
            rows = 4 * bm if triton_interpreted() else 1024
            grid = (triton.cdiv(N, rows), triton.cdiv(D, bd))
            _update_smallk_kernel[grid](x, labels, w if w is not None else sums, sums, cnt, wsum, N, D, k,
                                        x.stride(0), x.stride(1), rows, HAS_W=w is not None, ACC=tl_dtype(acc),
                                        KP=kp, BLOCK_M=bm, BLOCK_D=bd, num_warps=4)
        else:
            bm, bd = (32, 32) if triton_interpreted() else (64, 64)
            grid = (triton.cdiv(N, bm), triton.cdiv(D, bd))
            _update_atomic_kernel[grid](x, labels, w if w is not None else sums, sums, cnt, wsum, N, D,
                                        x.stride(0), x.stride(1), HAS_W=w is not None, ACC=tl_dtype(acc),
                                        BLOCK_M=bm, BLOCK_D=bd, num_warps=4)
    counts = cnt.to(torch.int64)
    total = counts.to(acc) if w is None else wsum
    nonempty = (total > 0)[:, None]
    means = sums / torch.where(total > 0, total, 1).to(acc)[:, None]
    keep = prev if prev is not None else torch.zeros_like(means)
    return torch.where(nonempty, means, keep), (counts if w is None else wsum)


# --------------------------------------------------------------------------- k-means++


@triton.jit
def _pp_block(BSTART, BEND, BGROUP, CAND, T, TP: tl.constexpr):
    """(first row, end row, candidate slots, their mask, candidate rows) of this program's block."""
    b = tl.program_id(0)
    s = tl.load(BSTART + b)
    e = tl.load(BEND + b)
    g = tl.load(BGROUP + b)
    offs_t = tl.arange(0, TP)
    mask_t = offs_t < T
    cand = tl.load(CAND + g * T + offs_t, mask=mask_t, other=0)
    return s, e, offs_t, mask_t, cand


@triton.jit
def _pp_tile_out(dist, rows, mask_r, offs_t, mask_t, DC, CLOSEST, W, N, HAS_W: tl.constexpr):
    """Store the [SUB, TP] distances in dc[t, i]; return sum_i w_i min(closest_i, dc[t, i]) (float64;
    w_i = 1 without HAS_W)."""
    tl.store(DC + offs_t[None, :] * N + rows[:, None], dist, mask=mask_r[:, None] & mask_t[None, :])
    cl = tl.load(CLOSEST + rows, mask=mask_r, other=0.0)
    pm = tl.where(mask_r[:, None], tl.minimum(dist, cl[:, None]), 0.0).to(tl.float64)
    if HAS_W:
        pm = pm * tl.load(W + rows, mask=mask_r, other=0.0).to(tl.float64)[:, None]
    return tl.sum(pm, axis=0)


@triton.jit
def _pp_eval_kernel(X, CAND, CLOSEST, W, DC, PART, BSTART, BEND, BGROUP, N, D, T, sxn, sxd,
                    HAS_W: tl.constexpr, ACC: tl.constexpr, TP: tl.constexpr, SUB: tl.constexpr,
                    BLOCK_D: tl.constexpr, UNROLL: tl.constexpr, STAGES: tl.constexpr):
    """dc[t, i] = ||x_i - x_{cand_t}||^2 over one block; PART[b, t] = sum_i w_i min(closest_i, dc[t, i]).

    The squared differences accumulate in a [SUB, TP, BLOCK_D] tile over the whole row and are
    summed over d once per row tile: a sum per d chunk costs 5 shuffles per product (sm_90a SASS).
    """
    s, e, offs_t, mask_t, cand = _pp_block(BSTART, BEND, BGROUP, CAND, T, TP)
    offs_d = tl.arange(0, BLOCK_D)
    part = tl.zeros((TP,), dtype=tl.float64)
    for r0 in range(s, e, SUB):
        rows = r0 + tl.arange(0, SUB)
        mask_r = rows < e
        acc3 = tl.zeros((SUB, TP, BLOCK_D), dtype=ACC)
        for d0 in tl.range(0, D, BLOCK_D, num_stages=STAGES, loop_unroll_factor=UNROLL):
            dd = d0 + offs_d
            mask_d = dd < D
            xt = tl.load(X + rows[:, None] * sxn + dd[None, :] * sxd,
                         mask=mask_r[:, None] & mask_d[None, :], other=0.0).to(ACC)
            ct = tl.load(X + cand[:, None] * sxn + dd[None, :] * sxd,
                         mask=mask_t[:, None] & mask_d[None, :], other=0.0).to(ACC)
            diff = xt[:, None, :] - ct[None, :, :]
            acc3 += diff * diff
        part += _pp_tile_out(tl.sum(acc3, axis=2), rows, mask_r, offs_t, mask_t, DC, CLOSEST, W, N, HAS_W)
    tl.store(PART + tl.program_id(0) * TP + offs_t, part)


@triton.jit
def _pp_select_kernel(PART, CAND, GBLK, BEST, IDX, CHOSEN, step, k, T,
                      TP: tl.constexpr, BLOCK_B: tl.constexpr):
    """Per group: potentials of the T candidates, the least one (first on ties) becomes center ``step``."""
    g = tl.program_id(0)
    b0 = tl.load(GBLK + g)
    b1 = tl.load(GBLK + g + 1)
    offs_t = tl.arange(0, TP)
    mask_t = offs_t < T
    pot = tl.zeros((TP,), dtype=tl.float64)
    for bb in range(b0, b1, BLOCK_B):
        bs = bb + tl.arange(0, BLOCK_B)
        p = tl.load(PART + bs[:, None] * TP + offs_t[None, :], mask=(bs < b1)[:, None], other=0.0)
        pot += tl.sum(p, axis=0)
    pot = tl.where(mask_t, pot, float("inf"))
    bt = tl.argmin(pot, axis=0, tie_break_left=True)
    cand = tl.load(CAND + g * T + offs_t, mask=mask_t, other=0)
    row = tl.sum(tl.where(offs_t == bt, cand, 0), axis=0)
    tl.store(BEST + g, bt.to(tl.int64))
    tl.store(IDX + g * k + step, row)
    tl.store(CHOSEN + row, 1)


@triton.jit
def _pp_update_kernel(CLOSEST, DC, BEST, CHOSEN, W, WSUM, WFREE, BSTART, BEND, BGROUP, N,
                      HAS_W: tl.constexpr, SUB: tl.constexpr):
    """closest = min(closest, dc[best]) over one block, and the block's weight sums for the next draw:
    sum_i w_i closest_i, and the rows of positive weight not chosen yet."""
    b = tl.program_id(0)
    s = tl.load(BSTART + b)
    e = tl.load(BEND + b)
    bt = tl.load(BEST + tl.load(BGROUP + b))
    ws = tl.zeros((SUB,), dtype=tl.float64)
    wf = tl.zeros((SUB,), dtype=tl.float64)
    for r0 in range(s, e, SUB):
        rows = r0 + tl.arange(0, SUB)
        m = rows < e
        v = tl.minimum(tl.load(CLOSEST + rows, mask=m, other=0.0), tl.load(DC + bt * N + rows, mask=m, other=0.0))
        tl.store(CLOSEST + rows, v, mask=m)
        ch = tl.load(CHOSEN + rows, mask=m, other=1)
        if HAS_W:
            wr = tl.load(W + rows, mask=m, other=0.0).to(tl.float64)
            ws += tl.where(m, v.to(tl.float64) * wr, 0.0)
            wf += tl.where(m & (ch == 0) & (wr > 0.0), 1.0, 0.0)
        else:
            ws += tl.where(m, v.to(tl.float64), 0.0)
            wf += tl.where(m & (ch == 0), 1.0, 0.0)
    tl.store(WSUM + b, tl.sum(ws, axis=0))
    tl.store(WFREE + b, tl.sum(wf, axis=0))


@triton.jit
def _pp_sample_kernel(DRAWS, WSUM, WFREE, CLOSEST, CHOSEN, W, BSTART, BEND, GBLK, CAND, T,
                      HAS_W: tl.constexpr, BLOCK_B: tl.constexpr, SUB: tl.constexpr):
    """One D^2 draw (group g, trial t): the first row whose running weight exceeds u * total.

    Weights are w_i closest[i] (w_i = 1 without HAS_W), or 1 for rows of positive weight not chosen
    yet when every such weight is 0.
    Block sums locate the block, then a scan inside it locates the row.
    """
    g = tl.program_id(0)
    t = tl.program_id(1)
    u = tl.load(DRAWS + g * T + t)
    b0 = tl.load(GBLK + g)
    b1 = tl.load(GBLK + g + 1)
    tot = tl.zeros((BLOCK_B,), dtype=tl.float64)
    fre = tl.zeros((BLOCK_B,), dtype=tl.float64)
    for bb in range(b0, b1, BLOCK_B):
        bs = bb + tl.arange(0, BLOCK_B)
        mb = bs < b1
        tot += tl.load(WSUM + bs, mask=mb, other=0.0)
        fre += tl.load(WFREE + bs, mask=mb, other=0.0)
    total = tl.sum(tot, axis=0)
    free = tl.sum(fre, axis=0)
    use_free = total <= 0.0
    target = u * tl.where(use_free, free, total)
    base = total * 0.0
    before = total * 0.0
    found = b1 * 0 - 1
    last_pos = b1 * 0 - 1
    for bb in range(b0, b1, BLOCK_B):
        bs = bb + tl.arange(0, BLOCK_B)
        mb = bs < b1
        w = tl.where(use_free, tl.load(WFREE + bs, mask=mb, other=0.0), tl.load(WSUM + bs, mask=mb, other=0.0))
        cum = base + tl.cumsum(w, axis=0)
        hit = (cum > target) & mb
        first_hit = tl.min(tl.where(hit, bs, b1), axis=0)
        last_pos = tl.maximum(last_pos, tl.max(tl.where(mb & (w > 0.0), bs, -1), axis=0))
        new = (found < 0) & (first_hit < b1)
        before = tl.where(new, base + tl.sum(tl.where(bs < first_hit, w, 0.0), axis=0), before)
        found = tl.where(new, first_hit, found)
        base += tl.sum(w, axis=0)
    blk = tl.where(found >= 0, found, tl.where(last_pos >= 0, last_pos, b0))
    rs = tl.load(BSTART + blk)
    re = tl.load(BEND + blk)
    cum0 = before
    pick = rs * 0 - 1
    last_row = rs
    for r0 in range(rs, re, SUB):
        rows = r0 + tl.arange(0, SUB)
        m = rows < re
        cl = tl.load(CLOSEST + rows, mask=m, other=0.0).to(tl.float64)
        ch = tl.load(CHOSEN + rows, mask=m, other=1)
        free = ch == 0
        if HAS_W:
            wr = tl.load(W + rows, mask=m, other=0.0).to(tl.float64)
            cl = cl * wr
            free = free & (wr > 0.0)
        w = tl.where(m, tl.where(use_free, tl.where(free, 1.0, 0.0), cl), 0.0)
        cum = cum0 + tl.cumsum(w, axis=0)
        hit = (cum > target) & m & (found >= 0)
        fh = tl.min(tl.where(hit, rows, re), axis=0)
        last_row = tl.maximum(last_row, tl.max(tl.where(m & (w > 0.0), rows, -1), axis=0))
        pick = tl.where((pick < 0) & (fh < re), fh, pick)
        cum0 += tl.sum(w, axis=0)
    tl.store(CAND + g * T + t, tl.where(pick >= 0, pick, last_row))


def _segment_blocks(offsets, bs, device):
    """Blocks of at most ``bs`` rows inside every segment: (start, end, group, gblk) on ``device``."""
    off = offsets.tolist()
    start, end, group, gblk = [], [], [], [0]
    for g in range(len(off) - 1):
        for r in range(off[g], off[g + 1], bs):
            start.append(r)
            end.append(min(off[g + 1], r + bs))
            group.append(g)
        gblk.append(len(start))
    as_t = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    return as_t(start), as_t(end), as_t(group), as_t(gblk)


PP_EVAL_ELEMS = 8192  # entries of the k-means++ eval's [SUB, TP, BLOCK_D] tile (float32; half for float64)
PP_EVAL_BLOCK_D = 8  # d per chunk: each thread holds whole chunks, so the final sum over d needs few shuffles
# d loop of the k-means++ eval: unroll factor and software-pipelining stages. Each chunk loads only
# SUB x BLOCK_D entries; 3 stages keep more loads in flight (unrolling did not pay).
PP_EVAL_LOOP = dict(UNROLL=1, STAGES=3)
PP_EVAL_WARPS = 4
PP_BLOCK_ROWS = 512  # rows per program of the eval and update kernels (one partial potential each)


def pp_eval_tile(tp, acc, interp):
    """(SUB, BLOCK_D) of ``_pp_eval_kernel`` for ``tp`` padded candidates."""
    if interp:
        return 16, 16
    elems = PP_EVAL_ELEMS // (2 if acc == torch.float64 else 1)
    bd = PP_EVAL_BLOCK_D
    return max(16, min(128, elems // (tp * bd))), bd


def kmeans_plusplus(x, offsets, k, first, draws, weights=None):
    """Greedy k-means++ in every segment of x; first [G], draws [k-1, G, T], weights [N] (optional:
    draws by w_i D_i^2, potential sum_i w_i D_i^2) -> indices int64 [G, k]."""
    N, D = x.shape
    dev = x.device
    acc = acc_dtype(x.dtype)
    G = offsets.numel() - 1
    T = draws.shape[2]
    TP = max(2, triton.next_power_of_2(T))
    idx = torch.empty((G, k), device=dev, dtype=torch.int64)
    if G == 0 or k == 0:
        return idx
    interp = triton_interpreted()
    bs = 64 if interp else PP_BLOCK_ROWS
    bstart, bend, bgroup, gblk = _segment_blocks(offsets, bs, dev)
    NB = bstart.numel()
    closest = torch.full((N,), float("inf"), device=dev, dtype=acc)
    chosen = torch.zeros(N, device=dev, dtype=torch.int8)
    dc = torch.empty((T, N), device=dev, dtype=acc)
    part = torch.empty((NB, TP), device=dev, dtype=torch.float64)
    wsum = torch.empty(NB, device=dev, dtype=torch.float64)
    wfree = torch.empty(NB, device=dev, dtype=torch.float64)
    cand = first.to(device=dev, dtype=torch.int64).reshape(G, 1).repeat(1, T)  # new memory: the kernels write it
    best = torch.empty(G, device=dev, dtype=torch.int64)
    draws = draws.to(device=dev, dtype=torch.float64).contiguous()
    w = closest if weights is None else weights.to(device=dev, dtype=acc).contiguous()
    has_w = weights is not None
    sub, bd = pp_eval_tile(TP, acc, interp)
    sub_scan = 64 if interp else 512
    for s in range(k):
        if s > 0:
            _pp_sample_kernel[(G, T)](draws[s - 1], wsum, wfree, closest, chosen, w, bstart, bend, gblk, cand, T,
                                      HAS_W=has_w, BLOCK_B=64 if interp else 1024, SUB=sub_scan)
        _pp_eval_kernel[(NB,)](x, cand, closest, w, dc, part, bstart, bend, bgroup, N, D, T, x.stride(0),
                               x.stride(1), HAS_W=has_w, ACC=tl_dtype(acc), TP=TP, SUB=sub, BLOCK_D=bd,
                               **PP_EVAL_LOOP, num_warps=PP_EVAL_WARPS)
        _pp_select_kernel[(G,)](part, cand, gblk, best, idx, chosen, s, k, T, TP=TP,
                                BLOCK_B=64 if interp else 256)
        if s + 1 < k:
            _pp_update_kernel[(NB,)](closest, dc, best, chosen, w, wsum, wfree, bstart, bend, bgroup, N,
                                     HAS_W=has_w, SUB=64 if interp else 512)
    return idx
