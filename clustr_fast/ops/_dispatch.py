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
