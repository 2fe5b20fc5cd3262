"""Shared helpers for the Triton launchers: dtypes, precision, launch sizes."""
import os

import torch
import triton.language as tl

# precision code (0 highest, 1 high, 2 medium) -> tl.dot input_precision for fp32 operands
DOT_PRECISION = {0: "tf32x3", 1: "tf32", 2: "tf32"}


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
