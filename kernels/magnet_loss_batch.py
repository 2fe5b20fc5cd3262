"""Triton kernels for the fused Magnet-loss batch form: three launches, two of them split by columns.

The batch (ClusTR: 240 x 512 with 12 clusters) is small, so the work is split over d, the
only wide axis (M = batch clusters, padded to BM <= 64; BD columns per program):

1. ``_batch_means_kernel``, a program per d chunk: counts n_k, means mu_k of its columns
   -> MU [BM, d], and its part of d_ik = ||f_i - mu_k||^2 by explicit differences
   -> DPART [chunks, N, BM];
2. ``_batch_loss_kernel``, one program: d_ik summed over the chunks (in chunk order:
   deterministic) -> PS [N, BM]; sigma^2 (the batch variance sum_i d_{i,a_i} / (N - 1), a given
   tensor or a given value); per row the logsumexp over impostors (other class, non-empty
   cluster), loss_i, total = sum_i w_i loss_i and, with WITH_GRAD, P = d total / d dist
   (overwriting PS), its row sums R, column sums and cv = 2 grad_var / (N - 1) -> COLS [BM + 1];
3. ``_batch_grad_kernel`` (WITH_GRAD), a program per d chunk: gmu_k = 2 (colsum_k mu_k -
   sum_i P_ik f_i) / n_k, then grad f_i = 2 (R_i f_i - sum_k P_ik mu_k) + gmu_{a_i} +
   cv (f_i - mu_{a_i}) for its columns (cv = 0 unless the batch variance is used).
"""
import math

import torch
import triton
import triton.language as tl

from clustr_fast._validate import acc_dtype

from . import triton_interpreted
from ._common import magnet_row_coefficients, magnet_row_loss, tl_dtype

MAX_CLUSTERS = 64  # BM: every batch cluster sits in one register tile


@triton.jit
def _row_ids(IDS, n0, N, BM: tl.constexpr, BN: tl.constexpr):
    """(rows, row mask, cluster ids (-1 outside), one-hot [BN, BM])."""
    rows = n0 + tl.arange(0, BN)
    mask_n = rows < N
    a = tl.load(IDS + rows, mask=mask_n, other=-1)
    onehot = a[:, None] == tl.arange(0, BM)[None, :]
    return rows, mask_n, a, onehot


@triton.jit
def _counts(IDS, N, BM: tl.constexpr, BN: tl.constexpr, ACC: tl.constexpr):
    """Rows per cluster [BM] (float)."""
    cnt = tl.zeros((BM,), dtype=ACC)
    for n0 in range(0, N, BN):
        rows, mask_n, a, onehot = _row_ids(IDS, n0, N, BM, BN)
        cnt += tl.sum(onehot.to(ACC), axis=0)
    return cnt


@triton.jit
def _column_chunk(IDS, N, D, ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """(program, cluster slots, its columns, their mask, 1 / max(n_k, 1)) of a column program."""
    pid = tl.program_id(0)
    dd = pid * BD + tl.arange(0, BD)
    inv_cnt = 1.0 / tl.maximum(_counts(IDS, N, BM, BN, ACC), 1.0)
    return pid, tl.arange(0, BM), dd, dd < D, inv_cnt


@triton.jit
def _batch_means_kernel(F, IDS, MU, DPART, N, D, sfn, sfd,
                        ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """Phase 1 for the columns [pid * BD, pid * BD + BD): MU and DPART[pid]."""
    pid, ks, dd, mask_d, inv_cnt = _column_chunk(IDS, N, D, ACC, BM, BN, BD)
    sums = tl.zeros((BM, BD), dtype=ACC)
    for n0 in range(0, N, BN):
        rows, mask_n, a, onehot = _row_ids(IDS, n0, N, BM, BN)
        f = tl.load(F + rows[:, None] * sfn + dd[None, :] * sfd,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(ACC)
        sums += tl.sum(onehot.to(ACC)[:, :, None] * f[:, None, :], axis=0)
    mu = sums * inv_cnt[:, None]
    tl.store(MU + ks[:, None] * D + dd[None, :], mu, mask=mask_d[None, :])
    for n0 in range(0, N, BN):
        rows, mask_n, a, onehot = _row_ids(IDS, n0, N, BM, BN)
        f = tl.load(F + rows[:, None] * sfn + dd[None, :] * sfd,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(ACC)
        diff = tl.where(mask_d[None, None, :], f[:, None, :] - mu[None, :, :], 0.0)
        tl.store(DPART + (pid * N + rows[:, None]) * BM + ks[None, :], tl.sum(diff * diff, axis=2),
                 mask=mask_n[:, None])


@triton.jit
def _batch_loss_kernel(IDS, CLS, VAR, W, LOSS, TOTAL, DPART, PS, RS, COLS, N, M, NCHUNK,
                       var_value, weight, alpha, log_eps,
                       VAR_MODE: tl.constexpr, HAS_W: tl.constexpr, USE_EPS: tl.constexpr,
                       WITH_GRAD: tl.constexpr, ACC: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BCH: tl.constexpr):
    """Phases 2-3 in one program: distances, sigma^2, losses, total and (WITH_GRAD) P, R, COLS."""
    ks = tl.arange(0, BM)
    mask_k = ks < M
    chs = tl.arange(0, BCH)
    cnt = _counts(IDS, N, BM, BN, ACC)

    own_sum = tl.zeros((BN,), dtype=ACC)
    for n0 in range(0, N, BN):
        rows, mask_n, a, onehot = _row_ids(IDS, n0, N, BM, BN)
        dist = tl.zeros((BN, BM), dtype=ACC)
        for c0 in range(0, NCHUNK, BCH):  # chunk parts in chunk order
            cc = c0 + chs
            part = tl.load(DPART + ((cc[:, None, None] * N + rows[None, :, None]) * BM + ks[None, None, :]),
                           mask=(cc < NCHUNK)[:, None, None] & mask_n[None, :, None], other=0.0)
            dist += tl.sum(part, axis=0)
        tl.store(PS + rows[:, None] * BM + ks[None, :], dist, mask=mask_n[:, None])
        own_sum += tl.sum(tl.where(onehot, dist, 0.0), axis=1)
    if VAR_MODE == 0:
        var = tl.sum(own_sum, axis=0) / (N - 1)
    elif VAR_MODE == 1:
        var = tl.load(VAR).to(ACC)
    else:
        var = var_value
    s = 0.5 / var
    tl.debug_barrier()  # PS rows are read back by other threads below

    cls_k = tl.load(CLS + ks, mask=mask_k, other=0)
    valid_k = mask_k & (cnt > 0)
    total = tl.zeros((BN,), dtype=ACC)
    gsum = tl.zeros((BN,), dtype=ACC)
    colsum = tl.zeros((BM,), dtype=ACC)
    for n0 in range(0, N, BN):
        rows, mask_n, a, onehot = _row_ids(IDS, n0, N, BM, BN)
        dist = tl.load(PS + rows[:, None] * BM + ks[None, :], mask=mask_n[:, None], other=0.0)
        cls_i = tl.load(CLS + a, mask=mask_n, other=0)
        imp = (cls_k[None, :] != cls_i[:, None]) & valid_k[None, :] & mask_n[:, None]
        z = tl.where(imp, -s * dist, float("-inf"))
        m = tl.max(z, axis=1)
        has = m > float("-inf")
        m_safe = tl.where(has, m, 0.0)
        p = tl.where(imp, tl.exp(z - m_safe[:, None]), 0.0)
        l_safe = tl.where(has, tl.sum(p, axis=1), 1.0)
        lse0 = tl.where(has, m_safe + tl.log(l_safe), 0.0)
        expected = tl.where(has, tl.sum(p * dist, axis=1) / l_safe, 0.0)
        own = tl.sum(tl.where(onehot, dist, 0.0), axis=1)
        a_log = -s * own - alpha
        loss = magnet_row_loss(a_log, lse0, has, log_eps, USE_EPS)
        tl.store(LOSS + rows, loss, mask=mask_n)
        if HAS_W:
            w = tl.load(W + rows, mask=mask_n, other=0.0).to(ACC)
        else:
            w = tl.where(mask_n, weight, 0.0).to(ACC)
        total += w * loss
        if WITH_GRAD:
            g_a, g_l = magnet_row_coefficients(w, loss, a_log, lse0, has, log_eps, USE_EPS)
            gsum += g_a * own + g_l * expected
            pm = tl.where(imp, (-s * g_l)[:, None] * tl.exp(z - lse0[:, None]), 0.0)
            pm += tl.where(onehot, (-s * g_a)[:, None], 0.0)
            tl.store(PS + rows[:, None] * BM + ks[None, :], pm, mask=mask_n[:, None])
            tl.store(RS + rows, tl.sum(pm, axis=1), mask=mask_n)
            colsum += tl.sum(pm, axis=0)
    tl.store(TOTAL, tl.sum(total, axis=0))
    if WITH_GRAD:
        tl.store(COLS + ks, colsum)
        if VAR_MODE == 0:
            cv = 4.0 * s * s * tl.sum(gsum, axis=0) / (N - 1)
        else:
            cv = tl.sum(gsum, axis=0) * 0.0
        tl.store(COLS + BM, cv)


@triton.jit
def _batch_grad_kernel(F, IDS, GRAD, MU, PS, RS, COLS, N, D, sfn, sfd,
                       ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """Phase 4 for the columns [pid * BD, pid * BD + BD): gradient through the means and sigma^2."""
    pid, ks, dd, mask_d, inv_cnt = _column_chunk(IDS, N, D, ACC, BM, BN, BD)
    colsum = tl.load(COLS + ks)
    cv = tl.load(COLS + BM)
    mu = tl.load(MU + ks[:, None] * D + dd[None, :], mask=mask_d[None, :], other=0.0)
    pf = tl.zeros((BM, BD), dtype=ACC)
    for n0 in range(0, N, BN):
        rows, mask_n, a, onehot = _row_ids(IDS, n0, N, BM, BN)
        pm = tl.load(PS + rows[:, None] * BM + ks[None, :], mask=mask_n[:, None], other=0.0)
        f = tl.load(F + rows[:, None] * sfn + dd[None, :] * sfd,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(ACC)
        pf += tl.sum(pm[:, :, None] * f[:, None, :], axis=0)
    gmu = 2.0 * (colsum[:, None] * mu - pf) * inv_cnt[:, None]
    for n0 in range(0, N, BN):
        rows, mask_n, a, onehot = _row_ids(IDS, n0, N, BM, BN)
        m2 = mask_n[:, None] & mask_d[None, :]
        pm = tl.load(PS + rows[:, None] * BM + ks[None, :], mask=mask_n[:, None], other=0.0)
        rs = tl.load(RS + rows, mask=mask_n, other=0.0)
        f = tl.load(F + rows[:, None] * sfn + dd[None, :] * sfd, mask=m2, other=0.0).to(ACC)
        # [BM, BN, BD] products summed over their leading axis: Triton 3.6 sums over the middle
        # axis of [BN, BM, BD] wrongly on an H200.
        pm_t = tl.trans(pm)[:, :, None]
        oh_t = tl.trans(onehot.to(ACC))[:, :, None]
        p_mu = tl.sum(pm_t * mu[:, None, :], axis=0)
        g_own = tl.sum(oh_t * gmu[:, None, :], axis=0)
        mu_own = tl.sum(oh_t * mu[:, None, :], axis=0)
        g = 2.0 * (rs[:, None] * f - p_mu) + g_own + cv * (f - mu_own)
        tl.store(GRAD + rows[:, None] * D + dd[None, :], g.to(GRAD.dtype.element_ty), mask=m2)


# Columns per program of the means and gradient kernels: their [BN, BM, BD] product tiles hold
# at most BATCH_TILE_ELEMS entries (BN = 16 rows); the 12 x 20 x 512 batch runs 32 programs.
BATCH_TILE_ELEMS = 4096
BATCH_WARPS = 4


def _config(m):
    bm = max(2, triton.next_power_of_2(m))
    if triton_interpreted():
        return dict(BM=bm, BN=16, BD=32), {}
    bn = 16
    bd = max(4, min(64, BATCH_TILE_ELEMS // (bn * bm)))
    return dict(BM=bm, BN=bn, BD=bd), dict(num_warps=BATCH_WARPS)


def magnet_loss_batch(feats, ids, classes, variance, variance_value, alpha, eps, row_weight, weight, with_grad):
    """(losses [N], total = sum_i w_i loss_i (0-d), d total / d feats [N, d] or [0, d]).

    Accumulation dtype for losses and total, the feats dtype for the gradient. At most
    ``MAX_CLUSTERS`` clusters; three launches (module docstring).
    """
    N, D = feats.shape
    M = classes.shape[0]
    if M > MAX_CLUSTERS:
        raise ValueError(f"the fused Triton batch kernel takes at most {MAX_CLUSTERS} clusters, got {M}")
    acc = acc_dtype(feats.dtype)
    dev = feats.device
    loss = torch.empty((N,), device=dev, dtype=acc)
    total = torch.zeros((), device=dev, dtype=acc)
    grad = torch.empty((N, D) if with_grad else (0, D), device=dev, dtype=feats.dtype)
    if N == 0:
        return loss, total, grad
    meta, launch = _config(M)
    bm, bd = meta["BM"], meta["BD"]
    chunks = max(1, triton.cdiv(D, bd))
    mu = torch.empty((bm, D), device=dev, dtype=acc)
    dpart = torch.empty((chunks, N, bm), device=dev, dtype=acc)
    ps = torch.empty((N, bm), device=dev, dtype=acc)
    rs = torch.empty((N,), device=dev, dtype=acc)
    cols = torch.empty((bm + 1,), device=dev, dtype=acc)  # column sums of P, then cv
    if variance is None and variance_value > 0 and acc == torch.float64:
        variance = torch.tensor(variance_value, dtype=acc)  # a float64 value, not a float32 argument
    if variance is not None:
        var_mode, var_t = 1, variance.to(device=dev, dtype=acc).reshape(())
    else:
        var_mode, var_t = (2 if variance_value > 0 else 0), total
    w = row_weight.to(acc).contiguous() if row_weight is not None else loss
    if D > 0:
        _batch_means_kernel[(chunks,)](feats, ids, mu, dpart, N, D, feats.stride(0), feats.stride(1),
                                       ACC=tl_dtype(acc), **meta, **launch)
    else:
        dpart.zero_()
    _batch_loss_kernel[(1,)](
        ids, classes, var_t, w, loss, total, dpart, ps, rs, cols, N, M, chunks,
        float(variance_value), float(weight), float(alpha), math.log(eps) if eps > 0 else 0.0,
        VAR_MODE=var_mode, HAS_W=row_weight is not None, USE_EPS=eps > 0, WITH_GRAD=bool(with_grad),
        ACC=tl_dtype(acc), BM=bm, BN=meta["BN"], BCH=min(16, triton.next_power_of_2(chunks)),
        **({} if triton_interpreted() else dict(num_warps=8)))
    if with_grad and D > 0:
        _batch_grad_kernel[(chunks,)](feats, ids, grad, mu, ps, rs, cols, N, D, feats.stride(0), feats.stride(1),
                                      ACC=tl_dtype(acc), **meta, **launch)
    return loss, total, grad
