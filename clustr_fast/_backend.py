"""Which implementation of an op runs: availability, overrides, per-op defaults.

Backends: ``reference`` (plain PyTorch, always there), ``cpu`` (C++ CPU kernels of
the extension ``clustr_fast._C``), ``cuda`` (C++/CUDA kernels of the same
extension, when it was built with CUDA and a GPU is visible) and ``triton``
(Triton kernels; on a GPU, or on the CPU under ``TRITON_INTERPRET=1``).

Choice, highest priority first: ``use_backend(name)`` (a context manager; its
choice holds process-wide while the block runs, so that autograd's backward
threads, which run CUDA backward passes, see it too), then the ``CLUSTR_FAST_BACKEND`` environment variable, then ``auto``.
An explicit backend that cannot run the op on the tensors' device raises
``RuntimeError``; ``auto`` picks the fastest available one and falls back to the
reference silently.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings
from typing import Iterator

import torch

NAMES = ("reference", "cpu", "cuda", "triton")
_CHOICES = ("auto",) + NAMES
_override: list[str] = []  # stack of use_backend() choices, innermost last
_override_lock = threading.Lock()

# ``auto`` order on CUDA tensors, per op: the faster backend first, as timed by
# benchmarks/report.py on an H200 (torch 2.11, Triton 3.6, 2026-11-26).
# Ops not listed use _DEFAULT_CUDA_ORDER.
_DEFAULT_CUDA_ORDER = ("cuda", "triton", "reference")
AUTO_CUDA_ORDER: dict[str, tuple[str, ...]] = {
    # pairwise_sqdist fwd 1M x 1024 x 128: Triton 6.0 ms (tensor cores, 3xTF32), CUDA 13.7 ms (SIMT).
    "pairwise_sqdist": ("triton", "cuda", "reference"),
    # pairwise_sqdist backward 50k x 200 x 512 (fwd+bwd minus fwd): CUDA about 0.9 ms,
    # Triton about 3.7 ms. Any backward takes any forward's inputs.
    "pairwise_sqdist_backward": ("cuda", "triton", "reference"),
    # kmeans_assign 1M x 1024 x 128 "highest": Triton 5.1 ms, CUDA 14.1 ms.
    "kmeans_assign": ("triton", "cuda", "reference"),
    # per-class refresh (k-means++ + Lloyd per group): CUDA 5.8 ms, Triton 15.7 ms -> default order.
    # k-means++ 1M x 1024 x 128: Triton 1006 ms, CUDA 1672-1896 ms.
    "kmeans_plusplus": ("triton", "cuda", "reference"),
    # soft_cluster_logits 50k x 200 x 512, D=20: fwd Triton 0.76-0.88 / CUDA 2.3 ms; backward
    # kernel (profiled) CUDA 1.07 / Triton 1.5 ms. The two passes pick separately: any
    # backward takes any forward's (out, idx).
    "soft_cluster_logits": ("triton", "cuda", "reference"),
    "soft_cluster_logits_backward": ("cuda", "triton", "reference"),
    # certified_radius 50k x 200 x 512: Triton 2.95 / CUDA 5.56 ms.
    "certified_radius": ("triton", "cuda", "reference"),
    # magnet_loss (global form) 50k x 200 x 512: fwd Triton 0.71 / CUDA 1.40 ms, fwd+bwd
    # Triton 3.36 / CUDA 3.70 ms.
    "magnet_loss": ("triton", "cuda", "reference"),
    # magnet_loss_batch (fused, 12 x 20 x 512): fwd+bwd CUDA 0.51 ms, Triton 0.93 ms -> default order.
}
_CPU_ORDER = ("cpu", "reference")

# --------------------------------------------------------------------------- extension


def _load_extension():
    if os.environ.get("CLUSTR_FAST_NO_EXT", "0") == "1":
        return None, "disabled by CLUSTR_FAST_NO_EXT=1"
    try:
        from . import _C  # noqa: F401  (loading it registers torch.ops.clustr_fast_C)

        return _C, None
    except Exception as exc:  # pragma: no cover - depends on the install
        return None, f"{type(exc).__name__}: {exc}"


_C, _C_ERROR = _load_extension()
if _C is None and os.environ.get("CLUSTR_FAST_NO_EXT", "0") != "1":
    warnings.warn(
        "clustr_fast: the C++ extension clustr_fast._C is not available "
        f"({_C_ERROR}); running on the Triton and reference backends only.",
        RuntimeWarning,
        stacklevel=2,
    )


@functools.cache
def extension_has(kernel: str, device_type: str) -> bool:
    """True when ``torch.ops.clustr_fast_C.<kernel>`` has a kernel for ``device_type``.

    Cached: the extension registers its kernels once, when it loads (a dispatcher lookup
    costs a few microseconds, and every op call asks).
    """
    if _C is None:
        return False
    key = "CPU" if device_type == "cpu" else "CUDA"
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"clustr_fast_C::{kernel}", key)
    except RuntimeError:
        return False


def _cuda_extension_built() -> bool:
    return _C is not None and extension_has("pairwise_sqdist", "cuda")


@functools.cache
def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
        return True
    except Exception:
        return False


def triton_interpreted() -> bool:
    """Triton kernels run on the CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backends() -> list[str]:
    """The backends that are built and importable here, in the order of ``NAMES``."""
    out = ["reference"]
    if _C is not None:
        out.append("cpu")
    if _cuda_extension_built() and torch.cuda.is_available():
        out.append("cuda")
    if _triton_importable() and (torch.cuda.is_available() or triton_interpreted()):
        out.append("triton")
    return out


# --------------------------------------------------------------------------- choice


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    return name.lower()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend ``name`` ("auto" restores the default).

    Raises ``RuntimeError`` when an op runs inside the block on tensors that
    the named backend cannot handle.
    """
    name = _check_name(name)
    if name != "auto" and name not in backends():
        raise RuntimeError(
            f"clustr_fast backend {name!r} is not available here; available: {backends()}"
        )
    with _override_lock:
        _override.append(name)
    try:
        yield
    finally:
        with _override_lock:
            _override.pop()


def requested() -> str:
    """The backend asked for right now: use_backend, else CLUSTR_FAST_BACKEND, else auto."""
    if _override:
        return _override[-1]
    return _check_name(os.environ.get("CLUSTR_FAST_BACKEND", "auto"))


def _can_run(backend: str, op: str, device: torch.device, kernel: str | None) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return device.type == "cpu" and extension_has(kernel or op, "cpu")
    if backend == "cuda":
        return device.type == "cuda" and extension_has(kernel or op, "cuda")
    if backend == "triton":
        if not _triton_importable():
            return False
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    return False


# Backends whose kernel for an op gives run-to-run different results on CUDA tensors (float
# atomics in an order the hardware picks). Under ``torch.use_deterministic_algorithms(True)``
# ``auto`` passes over them, and naming one raises (warns, with ``warn_only=True``), as PyTorch's
# own nondeterministic ops do. Kernels with a deterministic mode of their own (the Triton
# soft-logits and pairwise backward passes, ``kmeans_update``) switch to it instead.
NONDETERMINISTIC_CUDA: dict[str, tuple[str, ...]] = {
    "soft_cluster_logits_backward": ("cuda",),  # atomicAdd into grad_centers
}


def _nondeterministic(op: str, backend: str, device: torch.device) -> bool:
    return (device.type == "cuda" and backend in NONDETERMINISTIC_CUDA.get(op, ())
            and torch.are_deterministic_algorithms_enabled())


def _alert_nondeterministic(op: str, backend: str) -> None:
    msg = (f"clustr_fast: {op} on the {backend!r} backend does not have a deterministic implementation, "
           f"but torch.use_deterministic_algorithms(True) is set; use backend 'auto' or 'triton'")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg, UserWarning, stacklevel=3)
    else:
        raise RuntimeError(msg)


def pick(op: str, device: torch.device, implemented: tuple[str, ...], kernel: str | None = None) -> str:
    """Backend that runs ``op`` on ``device``.

    ``implemented`` lists the backends the op has; ``kernel`` is the name of its
    extension kernel (defaults to ``op``).
    """
    name = requested()
    if name != "auto":
        if name not in implemented or not _can_run(name, op, device, kernel):
            raise RuntimeError(
                f"clustr_fast: backend {name!r} cannot run {op} on {device.type} tensors "
                f"(available backends here: {backends()})"
            )
        if _nondeterministic(op, name, device):
            _alert_nondeterministic(op, name)
        return name
    order = AUTO_CUDA_ORDER.get(op, _DEFAULT_CUDA_ORDER) if device.type == "cuda" else _CPU_ORDER
    for cand in order:
        if cand in implemented and _can_run(cand, op, device, kernel) and not _nondeterministic(op, cand, device):
            return cand
    return "reference"
