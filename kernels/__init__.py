"""Triton kernels of clustr_fast (installed as ``clustr_fast.kernels``).

One module per op, each with its ``@triton.jit`` kernels and plain-Python
launchers that take and return torch tensors. They run on CUDA tensors, or on
CPU tensors under ``TRITON_INTERPRET=1`` (no bfloat16 there).

The kernels sit below the rest of the package: they import only ``_validate``
(dtype rules) and each other, and receive everything else (the Magnet row
coefficients, for one) from their callers. This package itself imports no
Triton, so ``clustr_fast._backend`` reads :func:`triton_interpreted` from here
whether or not Triton is installed.
"""
import os


def triton_interpreted() -> bool:
    """Triton kernels run on the CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
