"""Run-time dispatch of one custom op to the backend chosen by ``_backend.pick``."""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from .. import _backend


def extension_kernel(name: str) -> Callable:
    """``torch.ops.clustr_fast_C.<name>``, resolved at call time."""

    def call(*args):
        return getattr(torch.ops.clustr_fast_C, name)(*args)

    return call


def triton_kernel(module: str, name: str) -> Callable:
    """``clustr_fast.kernels.<module>.<name>``, imported on first use (Triton is optional)."""

    def call(*args):
        mod = importlib.import_module(f"clustr_fast.kernels.{module}")
        return getattr(mod, name)(*args)

    return call


def run(op: str, device: torch.device, impls: dict[str, Callable], *args, kernel: str | None = None):
    """Call ``impls[backend](*args)`` for the backend picked for ``op`` on ``device``."""
    backend = _backend.pick(op, device, tuple(impls), kernel)
    return impls[backend](*args)


def reference_vjp(fn: Callable, inputs: tuple, grads, *fixed_args):
    """Vector-Jacobian product of the reference ``fn(*inputs, *fixed_args)``.

    The reference backend of a backward op: gradients for each tensor of
    ``inputs`` given the output gradient(s) ``grads`` (``None`` entries mean zero).
    Uses ``torch.func.vjp``, which works inside a custom op's implementation where
    ordinary autograd recording is switched off.
    """
    out, vjp_fn = torch.func.vjp(lambda *leaves: fn(*leaves, *fixed_args), *inputs)
    if isinstance(out, tuple):
        gs = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype) for o, g in zip(out, grads))
    else:
        gs = grads.to(out.dtype)
    return vjp_fn(gs)
