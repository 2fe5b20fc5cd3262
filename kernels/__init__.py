"""Triton kernels of clustr_fast (installed as ``clustr_fast.kernels``).

One module per op, each with its ``@triton.jit`` kernels and plain-Python
launchers that take and return torch tensors. They run on CUDA tensors, or on
CPU tensors under ``TRITON_INTERPRET=1`` (no bfloat16 there).
"""
