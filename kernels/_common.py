"""Shared helpers for the Triton launchers and kernels: dtypes, precision, launch sizes, and the
Magnet row math of csrc/magnet_math.h as ``@triton.jit`` functions."""
import torch
import triton
import triton.language as tl

from . import triton_interpreted

# precision code (clustr_fast._validate.PRECISIONS) -> tl.dot input_precision for fp32 operands;
# "medium" casts to bf16 where a kernel supports it (pairwise_sqdist, kmeans).
# Plain TF32 ("tf32") is not used: on an H200 with Triton 3.6 it gave wrong products in pipelined launches.
DOT_PRECISION = {0: "tf32x3", 1: "tf32x3", 2: "tf32x3"}


def tl_dtype(dtype: torch.dtype):
    return {torch.float64: tl.float64, torch.float32: tl.float32}[dtype]


def split_launch(config: dict) -> tuple[dict, dict]:
    """(kernel meta-parameters, launch options) of a GPU configuration dict such as
    ``dict(BLOCK_M=64, num_warps=4)``; the dicts are module-level so that
    tools/ab_triton.py can time alternatives."""
    launch_keys = ("num_warps", "num_stages")
    return ({k: v for k, v in config.items() if k not in launch_keys},
            {k: v for k, v in config.items() if k in launch_keys})


def dot_precision(dtype: torch.dtype, precision: int) -> str:
    """input_precision for tl.dot on operands of ``dtype`` (after any upcast)."""
    if dtype == torch.float64 or triton_interpreted():
        return "ieee"
    return DOT_PRECISION[precision]


@triton.jit
def logaddexp(x, y):
    """log(exp(x) + exp(y)) without overflow (inside Triton kernels)."""
    hi = tl.maximum(x, y)
    lo = tl.minimum(x, y)
    return hi + tl.log(1.0 + tl.exp(lo - hi))


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b with ``input_precision`` PREC (``dot_precision``), accumulated in acc's dtype."""
    return tl.dot(a, b, acc, input_precision=PREC, out_dtype=acc.dtype)


@triton.jit
def magnet_row_loss(a, lse, has, log_eps, USE_EPS: tl.constexpr):
    """The Magnet loss of each row from ``a`` = A_i = -s own_i - alpha and ``lse`` = L_i (read only where
    ``has``: the row has an impostor), as ``row_loss`` of csrc/magnet_math.h:
    eps > 0: relu(-logaddexp(A_i - logaddexp(L_i, log eps), log eps)); eps = 0: relu(L_i - A_i), 0 without
    impostor."""
    if USE_EPS:
        le = tl.zeros_like(a) + log_eps
        b = tl.where(has, logaddexp(lse, le), le)
        loss = tl.maximum(-logaddexp(a - b, le), 0.0)
    else:
        loss = tl.where(has, tl.maximum(lse - a, 0.0), 0.0)
    return loss


@triton.jit
def magnet_row_coefficients(g, loss, a, lse, has, log_eps, USE_EPS: tl.constexpr):
    """``(gA, gL)``: the derivatives of ``g * loss_i`` in A_i and L_i (arguments as :func:`magnet_row_loss`),
    as ``row_coefficients`` of csrc/magnet_math.h."""
    gate = tl.where(loss > 0, g, 0.0)
    if USE_EPS:
        le = tl.zeros_like(a) + log_eps
        b = tl.where(has, logaddexp(lse, le), le)
        sig = tl.sigmoid(a - b - log_eps)
        tau = tl.where(has, tl.sigmoid(lse - log_eps), 0.0)
        g_a = -gate * sig
        g_l = gate * sig * tau
    else:
        g_a = tl.where(has, -gate, 0.0)
        g_l = tl.where(has, gate, 0.0)
    return g_a, g_l
