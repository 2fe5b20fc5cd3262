"""The op library ``torch.ops.clustr_fast``: each op is defined here once, by its module.

``define(schema, fake, reference=..., triton=(module, function))`` defines the op's schema,
registers its fake (shape) function for ``torch.compile`` and FakeTensor tracing, and records
its Python kernels: the reference (plain PyTorch) and the Triton one (``clustr_fast.kernels``,
imported on first use; a ``(module, function)`` pair, or a function that adapts one). The
extension ``clustr_fast._C`` registers the C++ CPU and CUDA kernels and, for the differentiable
ops, their autograd (csrc/autograd.cpp). Which kernel a device runs is chosen by
``clustr_fast._backend`` (its ``TABLE``); on every change of that choice, :func:`apply_choice`
registers a Python kernel over the extension's (``register_kernel``) where the choice is Triton
or the reference.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Callable

import torch

from .. import _backend

LIB = torch.library.Library("clustr_fast", "DEF")
PYTHON_KERNELS: dict[str, dict[str, Callable]] = {}
_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
# (op, device type) -> (backend, the Library that registered its Python kernel)
_registered: dict[tuple[str, str], tuple[str | None, torch.library.Library]] = {}


def triton_kernel(module: str, function: str) -> Callable:
    """``clustr_fast.kernels.<module>.<function>``, imported on its first call (Triton is optional)."""

    def call(*args):
        return getattr(importlib.import_module(f"clustr_fast.kernels.{module}"), function)(*args)

    call.__name__ = f"triton_{function}"
    return call


def define(schema: str, fake: Callable, *, reference: Callable, triton: tuple[str, str] | Callable | None = None):
    """Define ``clustr_fast::<name>`` from ``schema``; returns ``torch.ops.clustr_fast.<name>``.

    ``fake(*args)`` returns empty outputs of the right shapes and dtypes (checks with
    ``torch._check``); ``reference`` and ``triton`` take the op's arguments and return what
    the fake describes.
    """
    name = schema.split("(", 1)[0]
    LIB.define(schema)
    torch.library.register_fake(f"clustr_fast::{name}", fake, lib=LIB)
    kernels = {"reference": reference}
    if triton is not None:
        kernels["triton"] = triton_kernel(*triton) if isinstance(triton, tuple) else triton
    PYTHON_KERNELS[name] = kernels
    return getattr(torch.ops.clustr_fast, name)


def kernel(op: str, backend: str | None, device_type: str, requested: str, available: list[str]) -> Callable:
    """The Python kernel of ``op`` for ``backend``; for None, one that raises naming the request."""
    if backend is not None:
        return PYTHON_KERNELS[op][backend]

    def unavailable(*args):
        if requested == "auto":
            raise RuntimeError(f"clustr_fast: {op} has no implementation for {device_type} tensors")
        raise RuntimeError(f"clustr_fast: backend {requested!r} cannot run {op} on {device_type} tensors "
                           f"(available backends here: {available})")

    return unavailable


def register_kernel(op: str, device_type: str, fn: Callable) -> torch.library.Library:
    """Register ``fn`` as ``op``'s kernel for ``device_type``; ``_destroy()`` on the result undoes it."""
    lib = torch.library.Library("clustr_fast", "IMPL")
    with warnings.catch_warnings():  # covering the extension's kernel is intended
        warnings.simplefilter("ignore")
        lib.impl(op, fn, _KEYS[device_type])
    return lib


def apply_choice(chosen: dict, requested: str, available: list) -> None:
    """Register, for every (op, device type) of ``chosen`` whose backend changed, its Python kernel
    (Triton, the reference, or one that raises where nothing runs); the extension's own kernel
    needs nothing, so a registration made for an earlier choice is undone."""
    for (op, dev), backend in chosen.items():
        if op not in PYTHON_KERNELS:
            continue
        prev = _registered.get((op, dev))
        if prev is not None and prev[0] == backend:
            continue
        if prev is not None:
            prev[1]._destroy()
            del _registered[(op, dev)]
        if backend != dev:
            _registered[(op, dev)] = (backend, register_kernel(op, dev, kernel(op, backend, dev, requested, available)))


_backend.on_choice(apply_choice)
