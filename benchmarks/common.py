"""Benchmark cases shared by the pytest-benchmark files and ``report.py``.

Every ``bench_<op>.py`` defines ``CASES``: a list of :class:`Case`. A case builds
its inputs once for a device and offers one callable per provider:

- ``reference``           the plain-PyTorch reference (``clustr_fast.reference``
                          or the reference-code style it replaces)
- ``compiled_reference``  ``torch.compile`` of the reference
- ``cpu`` / ``cuda`` / ``triton``  the public op inside ``use_backend(name)``
- ``auto``                the public op with the default choice, where it mixes backends
                          (a case lists it in ``providers``; GPU only)

Each callable runs the measured work once (forward, backward or both, as
``mode`` says) and synchronises nothing; the timers do that.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import clustr_fast
from clustr_fast import _backend

PROVIDERS = ("reference", "compiled_reference", "cpu", "triton", "cuda")


@dataclass
class Case:
    op: str  # "pairwise_sqdist"
    mode: str  # "fwd" | "bwd" | "full"
    shape: str  # label, e.g. "N=20000,K=256,d=128"
    devices: tuple[str, ...]  # where the case is meant to run: ("cpu",), ("cuda",) or both
    make: Callable[[torch.device], dict]  # inputs on a device
    run: Callable[[str, dict], Any]  # run(provider, inputs): the work, once
    providers: tuple[str, ...] = PROVIDERS
    flops: float = 0.0  # useful FLOPs of one run (0: not counted)
    bytes: float = 0.0  # compulsory bytes moved by one run (0: not counted)
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def group(self) -> str:
        return f"{self.op}:{self.mode}"

    @property
    def id(self) -> str:
        return f"{self.op}:{self.mode}:{self.shape}"


def bench_device() -> torch.device:
    """The device benchmarks run on: the GPU when there is one."""
    want = os.environ.get("CLUSTR_FAST_BENCH_DEVICE")
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def provider_available(provider: str, device: torch.device) -> bool:
    if provider in ("reference", "compiled_reference"):
        return True
    avail = _backend.backends()
    if provider == "cpu":
        return device.type == "cpu" and "cpu" in avail
    if provider == "cuda":
        return device.type == "cuda" and "cuda" in avail
    if provider == "triton":
        return device.type == "cuda" and "triton" in avail  # the interpreter is not timed
    if provider == "auto":
        return device.type == "cuda"
    return False


def backend_scope(provider: str):
    """Context for running the public op on ``provider``'s backend."""
    if provider in ("cpu", "cuda", "triton"):
        return clustr_fast.use_backend(provider)
    return contextlib.nullcontext()


_COMPILED: dict[Any, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)``, cached per function object."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def randn(*shape, device, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=dtype).to(device)
    return t.requires_grad_(requires_grad)


# Ceilings used for the "% of card" column (measured on one H200, 2026-11-26, DESIGN.md).
CEILINGS = {
    "cuda": {"fp32_tflops": 51.0, "tf32_tflops": 400.0, "bf16_tflops": 750.0, "tbps": 4.2},
}
