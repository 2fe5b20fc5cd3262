"""Triton kernels for the Magnet loss.

Forward (``_magnet_fwd_kernel``): one program owns BLOCK_M rows. It computes
own_i = ||f_i - mu_{a_i}||^2 by explicit differences (and ||f_i||^2 on the way),
then walks the centers BLOCK_C at a time: the distance tile comes from tl.dot
over d, is consumed at once by an online logsumexp over the impostors (running
max m, sum l of exp(z - m), and sum of exp(z - m) d for E), and is dropped.
Only O(N) values are written: loss [N] and stats [3, N] = (own, L, E).

Backward (``_magnet_p_kernel``): for a bounded block of rows, the gradient of the
losses with respect to the distances,
    P_ik = -s gL_i exp(-s d_ik - L_i)   (impostors)      P_{i,a_i} = -s gA_i,
is written tile by tile (distances recomputed), then two products give
grad_f = 2 (rowsum(P) f - P mu) and grad_mu += -2 (P^T f - colsum(P) mu).
"""
import math

import torch
import triton
import triton.language as tl

from clustr_fast._validate import acc_dtype

from . import triton_interpreted
from ._common import dot_precision, magnet_row_loss, mma, tl_dtype

P_BLOCK_ELEMS = 1 << 22  # rows per backward block: at most this many P entries (16 MB in fp32)


@triton.jit
def _sq_tile(F, MU, CN, rows, cols, mask_m, mask_c, D, sfn, sfd, smc, smd,
             ACC: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """(f_i . mu_k [BLOCK_M, BLOCK_C] accumulated over d, ||mu_k||^2 [BLOCK_C] read from CN)."""
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    cn = tl.load(CN + cols, mask=mask_c, other=0.0)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        mask_d = dd < D
        ft = tl.load(F + rows[:, None] * sfn + dd[None, :] * sfd,
                     mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        ct = tl.load(MU + cols[None, :] * smc + dd[:, None] * smd,
                     mask=mask_c[None, :] & mask_d[:, None], other=0.0)
        cf = ct.to(ACC)
        if ft.dtype == tl.float16 or ft.dtype == tl.bfloat16:
            acc = tl.dot(ft, ct, acc)
        else:
            acc = mma(ft.to(ACC), cf, acc, DOT_PREC)
    return acc, cn


@triton.jit
def _row_norms(F, MU, rows, a, mask_m, D, sfn, sfd, smc, smd,
               ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """(||f_i||^2, ||f_i - mu_{a_i}||^2) for a block of rows."""
    fsq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)  # both summed over d once: no shuffles per chunk
    dsq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        m2 = mask_m[:, None] & (dd < D)[None, :]
        ft = tl.load(F + rows[:, None] * sfn + dd[None, :] * sfd, mask=m2, other=0.0).to(ACC)
        mt = tl.load(MU + a[:, None] * smc + dd[None, :] * smd, mask=m2, other=0.0).to(ACC)
        diff = ft - mt
        fsq += ft * ft
        dsq += diff * diff
    return tl.sum(fsq, axis=1), tl.sum(dsq, axis=1)


@triton.jit
def _impostors(CLS, VALID, cols, mask_c, cls_i, HAS_VALID: tl.constexpr):
    cls_k = tl.load(CLS + cols, mask=mask_c, other=0)
    imp = (cls_k[None, :] != cls_i[:, None]) & mask_c[None, :]
    if HAS_VALID:
        v = tl.load(VALID + cols, mask=mask_c, other=0)
        imp = imp & (v != 0)[None, :]
    return imp


@triton.jit
def _magnet_fwd_kernel(F, MU, CN, ASSIGN, CLS, VALID, VAR, LOSS, STATS, N, C, D,
                       sfn, sfd, smc, smd, alpha, log_eps,
                       HAS_VALID: tl.constexpr, USE_EPS: tl.constexpr,
                       ACC: tl.constexpr, DOT_PREC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rows < N
    a = tl.load(ASSIGN + rows, mask=mask_m, other=0)
    cls_i = tl.load(CLS + a, mask=mask_m, other=0)
    s = 0.5 / tl.load(VAR).to(ACC)
    fn, own = _row_norms(F, MU, rows, a, mask_m, D, sfn, sfd, smc, smd, ACC, BLOCK_M, BLOCK_D)

    m = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    l = tl.zeros((BLOCK_M,), dtype=ACC)
    e = tl.zeros((BLOCK_M,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask_c = cols < C
        dot, cn = _sq_tile(F, MU, CN, rows, cols, mask_m, mask_c, D, sfn, sfd, smc, smd,
                           ACC, DOT_PREC, BLOCK_M, BLOCK_C, BLOCK_D)
        dist = tl.maximum(fn[:, None] + cn[None, :] - 2.0 * dot, 0.0)
        imp = _impostors(CLS, VALID, cols, mask_c, cls_i, HAS_VALID)
        z = tl.where(imp, -s * dist, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        scale = tl.exp(m - m_safe)
        p = tl.where(imp, tl.exp(z - m_safe[:, None]), 0.0)
        l = l * scale + tl.sum(p, axis=1)
        e = e * scale + tl.sum(p * dist, axis=1)
        m = m_new

    has = m > float("-inf")
    l_safe = tl.where(has, l, 1.0)
    lse0 = tl.where(has, m + tl.log(l_safe), 0.0)
    expected = tl.where(has, e / l_safe, 0.0)
    loss = magnet_row_loss(-s * own - alpha, lse0, has, log_eps, USE_EPS)
    tl.store(LOSS + rows, loss, mask=mask_m)
    tl.store(STATS + rows, own, mask=mask_m)
    tl.store(STATS + N + rows, tl.where(has, lse0, float("-inf")), mask=mask_m)
    tl.store(STATS + 2 * N + rows, expected, mask=mask_m)


@triton.jit
def _magnet_p_kernel(F, MU, CN, ASSIGN, CLS, VALID, VAR, COEF_A, COEF_L, LSE, P, R, C, D,
                     sfn, sfd, smc, smd,
                     HAS_VALID: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """P [R, C] for R rows (see the module docstring); COEF_A = -s gA, COEF_L = -s gL."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = rows < R
    mask_c = cols < C
    a = tl.load(ASSIGN + rows, mask=mask_m, other=0)
    cls_i = tl.load(CLS + a, mask=mask_m, other=0)
    s = 0.5 / tl.load(VAR).to(ACC)
    ca = tl.load(COEF_A + rows, mask=mask_m, other=0.0)
    cl = tl.load(COEF_L + rows, mask=mask_m, other=0.0)
    lse = tl.load(LSE + rows, mask=mask_m, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    fn = tl.zeros((BLOCK_M,), dtype=ACC)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        ft = tl.load(F + rows[:, None] * sfn + dd[None, :] * sfd,
                     mask=mask_m[:, None] & (dd < D)[None, :], other=0.0).to(ACC)
        fn += tl.sum(ft * ft, axis=1)
    dot, cn = _sq_tile(F, MU, CN, rows, cols, mask_m, mask_c, D, sfn, sfd, smc, smd,
                       ACC, DOT_PREC, BLOCK_M, BLOCK_C, BLOCK_D)
    dist = tl.maximum(fn[:, None] + cn[None, :] - 2.0 * dot, 0.0)
    imp = _impostors(CLS, VALID, cols, mask_c, cls_i, HAS_VALID)
    p = cl[:, None] * tl.exp(tl.where(imp, -s * dist - lse[:, None], float("-inf")))
    p += tl.where(cols[None, :] == a[:, None], ca[:, None], 0.0)
    tl.store(P + rows[:, None] * C + cols[None, :], p, mask=mask_m[:, None] & mask_c[None, :])


def _config(dtype):
    if triton_interpreted():
        return dict(BLOCK_M=16, BLOCK_C=16, BLOCK_D=32), {}
    if dtype == torch.float64:
        return dict(BLOCK_M=32, BLOCK_C=32, BLOCK_D=16), dict(num_warps=4, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_C=64, BLOCK_D=32), dict(num_warps=4, num_stages=3)


def _valid_arg(valid, like):
    return (valid, True) if valid is not None else (like, False)


def magnet_loss_fwd(feats, centers, assign, classes, valid, var, alpha, eps):
    """Per-row losses [N] and stats [3, N] = (own, L, E) in the accumulation dtype."""
    N, D = feats.shape
    C = centers.shape[0]
    acc = acc_dtype(feats.dtype)
    loss = torch.empty((N,), device=feats.device, dtype=acc)
    stats = torch.empty((3, N), device=feats.device, dtype=acc)
    if N == 0:
        return loss, stats
    var = var.to(acc).reshape(())
    valid_t, has_valid = _valid_arg(valid, classes)
    meta, launch = _config(acc)
    grid = (triton.cdiv(N, meta["BLOCK_M"]),)
    cn = centers.to(acc).square().sum(1).contiguous()
    _magnet_fwd_kernel[grid](
        feats, centers, cn, assign, classes, valid_t, var, loss, stats, N, C, D,
        feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1),
        float(alpha), math.log(eps) if eps > 0 else 0.0,
        HAS_VALID=has_valid, USE_EPS=eps > 0, ACC=tl_dtype(acc), DOT_PREC=dot_precision(acc, 0),
        **meta, **launch)
    return loss, stats


def magnet_loss_bwd(g_a, g_l, feats, centers, assign, classes, valid, var, stats):
    """(grad_feats, grad_centers, grad_var) from the row coefficients ``(g_a, g_l)`` [N] (the
    derivatives of the weighted row losses in A_i and L_i, computed by the caller from the saved
    losses and stats: ``clustr_fast.ops.magnet_loss.row_coefficients``)."""
    N, D = feats.shape
    C = centers.shape[0]
    acc = acc_dtype(feats.dtype)
    var = var.to(acc).reshape(())
    s = 0.5 / var
    grad_var = 2.0 * s * s * (g_a * stats[0] + g_l * stats[2]).sum()
    coef_a = (-s * g_a).contiguous()
    coef_l = (-s * g_l).contiguous()
    lse = stats[1].contiguous()
    f = feats.to(acc)
    mu = centers.to(acc)
    grad_f = torch.empty((N, D), device=feats.device, dtype=acc)
    grad_mu = torch.zeros((C, D), device=feats.device, dtype=acc)
    if N == 0 or D == 0:
        return grad_f, grad_mu, grad_var
    valid_t, has_valid = _valid_arg(valid, classes)
    meta, launch = _config(acc)
    rows_per_block = max(1, min(N, P_BLOCK_ELEMS // max(C, 1)))
    p_buf = torch.empty((rows_per_block, C), device=feats.device, dtype=acc)
    cn = mu.square().sum(1).contiguous()
    col_sum = torch.zeros((C,), device=feats.device, dtype=acc)
    for r0 in range(0, N, rows_per_block):
        r1 = min(N, r0 + rows_per_block)
        R = r1 - r0
        p = p_buf[:R]
        fr = feats[r0:r1]
        grid = (triton.cdiv(R, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))
        _magnet_p_kernel[grid](
            fr, centers, cn, assign[r0:r1], classes, valid_t, var, coef_a[r0:r1], coef_l[r0:r1], lse[r0:r1],
            p, R, C, D, fr.stride(0), fr.stride(1), centers.stride(0), centers.stride(1),
            HAS_VALID=has_valid, ACC=tl_dtype(acc), DOT_PREC=dot_precision(acc, 0), **meta, **launch)
        f_r = f[r0:r1]
        torch.addmm(f_r * p.sum(1, keepdim=True), p, mu, beta=2, alpha=-2, out=grad_f[r0:r1])
        grad_mu.addmm_(p.t(), f_r, alpha=-2)
        col_sum += p.sum(0)
    grad_mu.addcmul_(col_sum[:, None], mu, value=2)
    return grad_f, grad_mu, grad_var
