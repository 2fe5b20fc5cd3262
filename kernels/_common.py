"""Shared helpers for the Triton launchers: dtypes, precision, launch sizes."""
import os

import torch
import triton
import triton.language as tl

# precision code (0 highest, 1 high, 2 medium) -> tl.dot input_precision for fp32 operands.
# "highest" is 3xTF32 (float32-exact); "high" is TF32. "medium" also runs TF32 in kernels
# without a bf16 cast (pairwise_sqdist and kmeans cast to bf16 for "medium").
# TF32 on an H200 (Triton 3.6), benchmarks/ab_triton.py, 2026-11-26: pairwise_sqdist error
# 3.2e-4 of ||x||^2 + ||c||^2 (TF32 rounding), kmeans_assign labels 99.95% equal to the float64
# argmin, soft_cluster_logits "high" 97.6% of rows with the float64 selection and values within
# 2.7e-7. (An earlier pairwise_sqdist kernel gave errors of 0.11 with TF32: a bug since fixed.)
DOT_PRECISION = {0: "tf32x3", 1: "tf32", 2: "tf32"}


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return {torch.float64: tl.float64, torch.float32: tl.float32}[dtype]


def split_launch(config: dict) -> tuple[dict, dict]:
    """(kernel meta-parameters, launch options) of a GPU configuration dict such as
    ``dict(BLOCK_M=64, num_warps=4)``; the dicts are module-level so that
    benchmarks/ab_triton.py can time alternatives."""
    launch_keys = ("num_warps", "num_stages")
    return ({k: v for k, v in config.items() if k not in launch_keys},
            {k: v for k, v in config.items() if k in launch_keys})


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
