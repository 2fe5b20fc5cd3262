"""Shared helpers for the Triton launchers: dtypes, precision, launch sizes."""
import os

import torch
import triton
import triton.language as tl

# precision code (0 highest, 1 high, 2 medium) -> tl.dot input_precision for fp32 operands.
# "high" would be plain TF32, but on an H200 with Triton 3.6 (2026-11-26) a TF32 tl.dot in
# pairwise_sqdist gave errors of 0.11 relative to ||x||^2+||c||^2, far beyond TF32 rounding
# (a wrong result, see benchmarks/RESULTS.md). Until TF32 is verified on a GPU again, "high"
# and "medium" fp32 products run as 3xTF32, which is float32-exact; kernels that cast to
# bf16 for "medium" (pairwise_sqdist, kmeans) still do, since that path was verified.
DOT_PRECISION = {0: "tf32x3", 1: "tf32x3", 2: "tf32x3"}


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return {torch.float64: tl.float64, torch.float32: tl.float32}[dtype]


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
