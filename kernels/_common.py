"""Shared helpers for the Triton launchers: dtypes, precision, launch sizes."""
import os

import torch
import triton
import triton.language as tl

# precision code (0 highest, 1 high, 2 medium) -> tl.dot input_precision for fp32 operands.
# Every code is 3xTF32 (float32-exact products); "medium" casts to bf16 where a kernel supports it
# (pairwise_sqdist, kmeans). Plain TF32 ("tf32") is faster but gave wrong products on an H200 with
# Triton 3.6 (benchmarks/RESULTS.md, runs 10-11, 2026-11-26): pairwise_sqdist "high" erred by up to
# 0.15 of ||x||^2 + ||c||^2 on some shapes with software-pipelined launches (num_stages >= 2) and
# was right with num_stages=1 or 3xTF32. "High" therefore means 3xTF32 in the Triton kernels until
# tools/tf32_diag.py shows a TF32 form right on every shape; then set DOT_PRECISION[1] to it.
# "tf32r" (not a default; tools/tf32_diag.py times and checks it) rounds both operands to
# TF32 in registers and then runs plain TF32 products, so the products do not read the
# pipelined shared-memory tiles directly, the path run 11 found wrong.
# A code mapped to plain "tf32" runs its launches unpipelined (TF32_ONE_STAGE below).
DOT_PRECISION = {0: "tf32x3", 1: "tf32x3", 2: "tf32x3"}


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return {torch.float64: tl.float64, torch.float32: tl.float32}[dtype]


def split_launch(config: dict) -> tuple[dict, dict]:
    """(kernel meta-parameters, launch options) of a GPU configuration dict such as
    ``dict(BLOCK_M=64, num_warps=4)``; the dicts are module-level so that
    tools/ab_triton.py can time alternatives."""
    launch_keys = ("num_warps", "num_stages")
    return ({k: v for k, v in config.items() if k not in launch_keys},
            {k: v for k, v in config.items() if k in launch_keys})


# Plain TF32 products ("tf32") run in launches without software pipelining (num_stages=1): run 11
# found them wrong in pipelined launches on Triton 3.6 and right in unpipelined ones (H200,
# tools/tf32_diag.py). Only matters while DOT_PRECISION maps a code to "tf32".
TF32_ONE_STAGE = True


def launch_for(launch: dict, prec: str) -> dict:
    """Launch options for products of input precision ``prec`` (see TF32_ONE_STAGE)."""
    if prec == "tf32" and TF32_ONE_STAGE and not interpreted():
        return dict(launch, num_stages=1)
    return launch


def dot_precision(dtype: torch.dtype, precision: int) -> str:
    """input_precision for tl.dot on operands of ``dtype`` (after any upcast)."""
    if dtype == torch.float64 or interpreted():
        return "ieee"
    return DOT_PRECISION[precision]


@triton.jit
def logaddexp(x, y):
    """log(exp(x) + exp(y)) without overflow (inside Triton kernels)."""
    hi = tl.maximum(x, y)
    lo = tl.minimum(x, y)
    return hi + tl.log(1.0 + tl.exp(lo - hi))


@triton.jit
def _round_tf32(x):
    """x rounded to TF32 (10 mantissa bits, nearest, ties away), in registers."""
    return tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b with ``input_precision`` PREC (``dot_precision``); "tf32r": see DOT_PRECISION."""
    if PREC == "tf32r":
        return tl.dot(_round_tf32(a), _round_tf32(b), acc, input_precision="tf32", out_dtype=acc.dtype)
    else:
        return tl.dot(a, b, acc, input_precision=PREC, out_dtype=acc.dtype)
