"""Triton kernels for ``pairwise_sqdist``.

Forward: one program computes a BLOCK_M x BLOCK_N tile of
    out[i,k] = max(||x_i||^2 + ||c_k||^2 - 2 x_i.c_k, 0)
accumulating the dot products and both squared norms in the same loop over d,
so x and c are read once per tile and nothing but ``out`` is written.
Products: fp16/bf16 operands go straight to the tensor cores (exact products,
fp32 accumulation); fp32 operands use 3xTF32 ("highest" and "high",
float32-exact; see _common.DOT_PRECISION) or bf16 ("medium"); float64 uses IEEE fp64.

Backward: grad_a = 2 (rowsum(G) * a - G b), one kernel used twice
(G, x, c for grad_x and G^T, c, x for grad_c through strides). When the output
has few rows (grad_c: K centers against N samples) the sum over the long axis
is split across programs that add atomically into a float32 buffer (not
bitwise deterministic; with torch.use_deterministic_algorithms(True) it runs
unsplit).
"""
import torch
import triton
import triton.language as tl

from clustr_fast._validate import acc_dtype

from . import triton_interpreted
from ._common import dot_precision, mma, split_launch, tl_dtype


@triton.jit
def _sqdist_fwd_kernel(X, C, OUT, N, K, D,
                       sxn, sxd, scn, scd,
                       ACC: tl.constexpr, DOT_PREC: tl.constexpr, CAST_BF16: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    num_n = tl.cdiv(K, BLOCK_N)
    # grouped ordering: neighbouring programs share c tiles in L2
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % size_m)
    pid_n = (pid % (GROUP_M * num_n)) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_n = offs_n < K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    xn = tl.zeros((BLOCK_M,), dtype=ACC)
    cn = tl.zeros((BLOCK_N,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        mask_d = dd < D
        xt = tl.load(X + offs_m[:, None] * sxn + dd[None, :] * sxd,
                     mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        xf = xt.to(ACC)
        xn += tl.sum(xf * xf, axis=1)
        ct = tl.load(C + offs_n[None, :] * scn + dd[:, None] * scd,  # [BLOCK_D, BLOCK_N]: the dot's B
                     mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        cf = ct.to(ACC)
        cn += tl.sum(cf * cf, axis=0)
        if CAST_BF16:
            acc = tl.dot(xt.to(tl.bfloat16), ct.to(tl.bfloat16), acc)
        elif xt.dtype == tl.float16 or xt.dtype == tl.bfloat16:
            acc = tl.dot(xt, ct, acc)
        else:
            acc = mma(xf, cf, acc, DOT_PREC)
    out = xn[:, None] + cn[None, :] - 2.0 * acc
    out = tl.maximum(out, 0.0)
    tl.store(OUT + offs_m[:, None] * K + offs_n[None, :], out,
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _sqdist_bwd_kernel(G, A, B, OUT, M, K, D, k_per_split,
                       sgm, sgk, sam, sad, sbk, sbd,
                       ACC: tl.constexpr, DOT_PREC: tl.constexpr, ATOMIC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[m, :] (+)= 2 * (sum_k G[m,k] * A[m,:] - sum_k G[m,k] B[k,:]) over one K split.

    Both terms are linear in the partial sums over k, so K splits (grid axis 2)
    add their contributions atomically into a float32/float64 OUT.
    """
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_d = offs_d < D
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    rs = tl.zeros((BLOCK_M,), dtype=ACC)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < k_hi
        g = tl.load(G + offs_m[:, None] * sgm + kk[None, :] * sgk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(ACC)
        b = tl.load(B + kk[:, None] * sbk + offs_d[None, :] * sbd,
                    mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(ACC)
        rs += tl.sum(g, axis=1)
        acc = mma(g, b, acc, DOT_PREC)
    a = tl.load(A + offs_m[:, None] * sam + offs_d[None, :] * sad,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(ACC)
    out = 2.0 * (rs[:, None] * a - acc)
    ptrs = OUT + offs_m[:, None] * D + offs_d[None, :]
    mask = mask_m[:, None] & mask_d[None, :]
    if ATOMIC:
        tl.atomic_add(ptrs, out, mask=mask, sem="relaxed")
    else:
        tl.store(ptrs, out.to(OUT.dtype.element_ty), mask=mask)


# GPU launch configurations (module-level so that tools/ab_triton.py can time alternatives).
FWD_GPU_FP32 = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=32, GROUP_M=8, num_warps=8, num_stages=3)
FWD_GPU_FP64 = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=16, GROUP_M=8, num_warps=4, num_stages=2)
BWD_GPU_FP32 = dict(BLOCK_M=128, BLOCK_K=32, BLOCK_D=64, num_warps=8, num_stages=3)
BWD_GPU_FP64 = dict(BLOCK_M=64, BLOCK_K=16, BLOCK_D=64, num_warps=4, num_stages=2)


def _fwd_config(dtype: torch.dtype):
    if triton_interpreted():
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=32, GROUP_M=4), {}
    return split_launch(FWD_GPU_FP64 if dtype == torch.float64 else FWD_GPU_FP32)


def pairwise_sqdist(x: torch.Tensor, c: torch.Tensor, precision: int = 0) -> torch.Tensor:
    """x [N,d], c [K,d] -> [N,K] squared distances (float32; float64 for float64 inputs)."""
    N, D = x.shape
    K = c.shape[0]
    acc = acc_dtype(x.dtype)
    out = torch.empty((N, K), device=x.device, dtype=acc)
    if N == 0 or K == 0:
        return out
    if D == 0:
        return out.zero_()
    meta, launch = _fwd_config(x.dtype)
    grid = (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_N"]),)
    prec = dot_precision(acc, precision)
    _sqdist_fwd_kernel[grid](
        x, c, out, N, K, D, x.stride(0), x.stride(1), c.stride(0), c.stride(1),
        ACC=tl_dtype(acc), DOT_PREC=prec,
        CAST_BF16=(precision == 2 and x.dtype == torch.float32 and not triton_interpreted()),
        **meta, **launch)
    return out


def _bwd_one(g: torch.Tensor, a: torch.Tensor, b: torch.Tensor, precision: int) -> torch.Tensor:
    """2 (rowsum(g) a - g b) for g [M,K], a [M,D], b [K,D]; split over K when M is small."""
    M, D = a.shape
    K = b.shape[0]
    acc = acc_dtype(a.dtype)
    if M == 0 or D == 0 or K == 0:
        return torch.zeros((M, D), device=a.device, dtype=a.dtype)
    if triton_interpreted():
        meta, launch = dict(BLOCK_M=32, BLOCK_K=32, BLOCK_D=32), {}
    else:
        meta, launch = split_launch(BWD_GPU_FP64 if acc == torch.float64 else BWD_GPU_FP32)
    tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(D, meta["BLOCK_D"])
    splits = 1
    if a.is_cuda and not torch.are_deterministic_algorithms_enabled():
        sms = torch.cuda.get_device_properties(a.device).multi_processor_count
        splits = max(1, min(triton.cdiv(2 * sms, tiles), triton.cdiv(K, 8 * meta["BLOCK_K"])))
    k_per_split = triton.cdiv(triton.cdiv(K, splits), meta["BLOCK_K"]) * meta["BLOCK_K"]
    splits = triton.cdiv(K, k_per_split)
    atomic = splits > 1
    out = torch.zeros((M, D), device=a.device, dtype=acc) if atomic else torch.empty((M, D), device=a.device, dtype=a.dtype)
    grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_D"]), splits)
    prec = dot_precision(acc, precision)
    _sqdist_bwd_kernel[grid](
        g, a, b, out, M, K, D, k_per_split,
        g.stride(0), g.stride(1), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        ACC=tl_dtype(acc), DOT_PREC=prec, ATOMIC=atomic, **meta, **launch)
    return out.to(a.dtype)


def pairwise_sqdist_backward(grad: torch.Tensor, x: torch.Tensor, c: torch.Tensor, precision: int = 0):
    """grad [N,K] -> (grad_x [N,d], grad_c [K,d]) in the dtypes of x and c."""
    grad = grad.to(acc_dtype(x.dtype))
    return _bwd_one(grad, x, c, precision), _bwd_one(grad.t(), c, x, precision)
