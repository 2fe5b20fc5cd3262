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


# Ceilings used for the "% of card" column (measured on one H200, 2026-11-26).
CEILINGS = {
    "cuda": {"fp32_tflops": 51.0, "tf32_tflops": 400.0, "bf16_tflops": 750.0, "tbps": 4.2},
}


# ---- targets: what the project holds its own providers to, per device kind and case

OURS = ("cpu", "triton", "cuda", "auto")  # the providers that run clustr_fast's kernels

# Peers: other implementations measured as their own case, the base case's id plus ",<suffix>"
# (provider "reference"); the torch.compile'd reference is the provider ``compiled_reference``.
PEERS = {"cdist": "torch.cdist", "sklearn": "scikit-learn", "faiss": "faiss-cpu"}
COMPILED_PEER = "torch.compile"


@dataclass(frozen=True)
class Target:
    """A goal for our providers on one case: a time, a speed-up or a memory bound.

    ``ratio`` is a speed-up over the ``reference`` provider of ``against`` (a peer case's id;
    the case itself when empty); ``ms`` a median time; ``peak_extra_mb`` the GPU memory a call
    allocates above its inputs.
    """

    device: str  # "cpu" | "cuda"
    case: str  # Case.id
    ms: float | None = None
    ratio: float | None = None
    against: str | None = None
    peak_extra_mb: float | None = None

    def text(self) -> str:
        if self.ms is not None:
            return f"<= {self.ms:g} ms"
        if self.ratio is not None:
            peer = self.against.rsplit(",", 1)[-1] if self.against else ""
            return f">= {self.ratio:g}x {PEERS.get(peer, 'reference')}"
        return f"<= {self.peak_extra_mb:g} MB peak extra"

    def as_dict(self) -> dict:
        out = {k: v for k, v in (("ms", self.ms), ("ratio", self.ratio), ("against", self.against),
                                 ("peak_extra_mb", self.peak_extra_mb)) if v is not None}
        out["text"] = self.text()
        return out

    def met(self, row: dict, reference_ms: dict) -> bool | None:
        """Whether ``row`` (one provider's measurement) meets it; None when it cannot tell."""
        if self.peak_extra_mb is not None:
            peak = row.get("peak_extra_mb")
            return None if peak is None else peak <= self.peak_extra_mb
        ms = row.get("ms")
        if ms is None:
            return None
        if self.ms is not None:
            return ms <= self.ms
        base = reference_ms.get(self.against or row["case"])
        return None if base is None else base / ms >= self.ratio


_BATCH = "magnet_loss:full:batch M=12,per=20,d=512"
_REFRESH = "kmeans_per_group:full:G=10,n=5000,d=512,k=2,it=20"
_KMEANS_CPU = "kmeans:full:N=50000,d=64,k=64,it=20"

TARGETS = (
    # CPU (2 cores): speed-ups over the plain-PyTorch reference or the peer named
    Target("cpu", "pairwise_sqdist:fwd:N=20000,K=256,d=128", ratio=1.5),
    Target("cpu", _BATCH, ratio=2.0),
    Target("cpu", "magnet_loss:fwd:N=20000,C=256,d=128", ratio=2.0),
    Target("cpu", "magnet_loss:full:N=20000,C=256,d=128", ratio=2.0),
    Target("cpu", "soft_cluster_logits:fwd:N=20000,C=256,d=128,D=20", ratio=2.0),
    Target("cpu", _KMEANS_CPU, ratio=3.0, against=_KMEANS_CPU + ",sklearn"),
    Target("cpu", _KMEANS_CPU + ",weighted", ratio=3.0, against=_KMEANS_CPU + ",weighted,sklearn"),
    Target("cpu", _REFRESH, ratio=10.0, against=_REFRESH + ",sklearn"),
    # GPU (H100/H200): times; the ",high" cases are TF32 goals
    Target("cuda", _BATCH, ms=0.10),
    Target("cuda", "magnet_loss:full:N=50000,C=200,d=512", ratio=4.0),
    Target("cuda", "magnet_loss:fwd:N=1000000,C=4096,d=128", peak_extra_mb=64.0),
    Target("cuda", "soft_cluster_logits:fwd:N=50000,C=200,d=512,D=20", ms=0.25),
    Target("cuda", "soft_cluster_logits:full:N=50000,C=200,d=512,D=20", ms=0.5),
    Target("cuda", "soft_cluster_logits:fwd:N=200000,C=2000,d=512,D=32,high", ms=3.0),
    Target("cuda", "kmeans_assign:fwd:N=1000000,K=1024,d=128", ms=5.0),
    Target("cuda", "kmeans_assign:fwd:N=1000000,K=1024,d=128,high", ms=1.3),
    Target("cuda", "kmeans_plusplus:fwd:N=1000000,k=1024,d=128", ms=150.0),
    Target("cuda", "kmeans_lloyd:full:N=1000000,K=20000,d=256,highest", ms=240.0),
    Target("cuda", "kmeans_lloyd:full:N=1000000,K=20000,d=256,high", ms=40.0),
    Target("cuda", _REFRESH, ms=5.0),
)
