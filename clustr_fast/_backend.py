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

This module is the only reader of the requested backend. ``TABLE`` lists every op's
implementations per device type; on a change of the choice, ``refresh`` works out the backend
of every (op, device type) and hands the choice to the op layer (``on_choice``: the ops'
Python kernels are registered with the dispatcher there, clustr_fast/ops/_library.py), so a
call pays no choice. This module imports nothing of the op layer above it.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings
from typing import Callable, Iterator

import torch

from .kernels import triton_interpreted

NAMES = ("reference", "cpu", "cuda", "triton")
_CHOICES = ("auto",) + NAMES
_override: list[str] = []  # stack of use_backend() choices, innermost last
_override_lock = threading.Lock()

# One table of backends: for each op and device type, the implementations it has, in the order
# ``auto`` tries them ("cpu"/"cuda": the extension's kernel; "triton"; "reference": plain PyTorch).
# ``auto`` never takes "triton" on the CPU (the interpreter is for tests). An op without an entry
# for a device does not run there: the callers of the fused ops (``runs``) then compose smaller ones.
# The CUDA orders come from benchmarks/report.py on an H200 (torch 2.11, Triton 3.6, 2026-11-26).
_CPU = ("cpu", "reference", "triton")
_CUDA = ("cuda", "triton", "reference")
_TRITON_FIRST = ("triton", "cuda", "reference")
TABLE: dict[str, dict[str, tuple[str, ...]]] = {
    # fwd 1M x 1024 x 128: Triton 6.0 ms (tensor cores, 3xTF32), CUDA 13.7 ms (SIMT).
    "pairwise_sqdist": {"cpu": _CPU, "cuda": _TRITON_FIRST},
    # backward 50k x 200 x 512 (fwd+bwd minus fwd): CUDA about 0.9 ms, Triton about 3.7 ms.
    # Any backward takes any forward's inputs.
    "pairwise_sqdist_backward": {"cpu": _CPU, "cuda": _CUDA},
    # 50k x 200 x 512, D=20: fwd Triton 0.76-0.88 / CUDA 2.3 ms; backward kernel (profiled) CUDA 1.07 /
    # Triton 1.5 ms. Any backward takes any forward's (out, idx).
    "soft_cluster_logits": {"cpu": _CPU, "cuda": _TRITON_FIRST},
    "soft_cluster_logits_backward": {"cpu": _CPU, "cuda": _CUDA},
    # 50k x 200 x 512: Triton 2.95 / CUDA 5.56 ms.
    "certified_radius": {"cpu": _CPU, "cuda": _TRITON_FIRST},
    # global form 50k x 200 x 512: fwd Triton 0.71 / CUDA 1.40 ms, fwd+bwd Triton 3.36 / CUDA 3.70 ms.
    "magnet_loss_fwd": {"cpu": _CPU, "cuda": _TRITON_FIRST},
    "magnet_loss_bwd": {"cpu": _CPU, "cuda": _TRITON_FIRST},
    # global form with its gradient in one pass: the CPU only (the GPU runs fwd, then bwd).
    "magnet_loss_fused": {"cpu": ("cpu", "reference")},
    # batch form, fused (12 x 20 x 512): fwd+bwd CUDA 0.51 ms, Triton 0.93 ms.
    "magnet_loss_batch": {"cpu": _CPU, "cuda": _CUDA},
    # 1M x 1024 x 128 "highest": Triton 5.1 ms, CUDA 14.1 ms.
    "kmeans_assign": {"cpu": _CPU, "cuda": _TRITON_FIRST},
    "kmeans_update": {"cpu": _CPU, "cuda": _CUDA},
    # 1M x 1024 x 128: Triton 1006 ms, CUDA 1672-1896 ms.
    "kmeans_plusplus": {"cpu": _CPU, "cuda": _TRITON_FIRST},
    # fused Lloyd step and loops: the CPU, and the CUDA Lloyd loop (a few launches and one 4-byte
    # read per iteration); elsewhere the callers run kmeans_assign and kmeans_update step by step.
    "kmeans_lloyd_step": {"cpu": ("cpu", "reference")},
    "kmeans_lloyd_groups": {"cpu": ("cpu", "reference"), "cuda": ("cuda",)},
    "kmeans_fit_groups": {"cpu": ("cpu", "reference")},
}
DEVICE_TYPES = ("cpu", "cuda")

# --------------------------------------------------------------------------- extension


def _load_extension():
    if os.environ.get("CLUSTR_FAST_NO_EXT", "0") == "1":
        return None, "disabled by CLUSTR_FAST_NO_EXT=1"
    try:
        from . import _C  # noqa: F401  (loading it registers the kernels of torch.ops.clustr_fast)

        return _C, None
    except Exception as exc:  # pragma: no cover - depends on the install
        return None, f"{type(exc).__name__}: {exc}"


_C, _C_ERROR = _load_extension()
if _C is None and os.environ.get("CLUSTR_FAST_NO_EXT", "0") != "1":
    warnings.warn(
        "clustr_fast: the C++ extension clustr_fast._C is not available "
        f"({_C_ERROR}); running on the reference backend only.",
        RuntimeWarning,
        stacklevel=2,
    )


_extension_kernels: dict[tuple[str, str], bool] = {}


def extension_has(op: str, device_type: str) -> bool:
    """True when the extension registered a kernel of ``torch.ops.clustr_fast.<op>`` for ``device_type``.

    Read once per (op, device) before any Python kernel is registered for it (see ``refresh``).
    """
    key = (op, device_type)
    if key not in _extension_kernels:
        has = False
        if _C is not None:
            try:
                has = torch._C._dispatch_has_kernel_for_dispatch_key(
                    f"clustr_fast::{op}", "CPU" if device_type == "cpu" else "CUDA")
            except RuntimeError:
                has = False
        _extension_kernels[key] = has
    return _extension_kernels[key]


def ops_available() -> bool:
    """The op layer runs: the extension is loaded (it holds the ops' autograd, csrc/autograd.cpp).

    Without it, the public functions run the plain reference functions (``clustr_fast.reference``).
    """
    return _C is not None


def _cuda_extension_built() -> bool:
    return _C is not None and extension_has("pairwise_sqdist", "cuda")


@functools.cache
def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
        return True
    except Exception:
        return False


def backends() -> list[str]:
    """The backends that are built and importable here, in the order of ``NAMES``."""
    out = ["reference"]
    if _C is not None:
        out.append("cpu")
    if _cuda_extension_built() and torch.cuda.is_available():
        out.append("cuda")
    # the ops' autograd lives in the extension, so Triton needs it too
    if _C is not None and _triton_importable() and (torch.cuda.is_available() or triton_interpreted()):
        out.append("triton")
    return out


# --------------------------------------------------------------------------- choice


def _check_name(name: str, what: str = "backend") -> str:
    if not isinstance(name, str) or name.lower() not in _CHOICES:
        raise ValueError(f"{what} must be one of {_CHOICES}, got {name!r}")
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
        refresh()
    try:
        yield
    finally:
        with _override_lock:
            _override.pop()
            refresh()


def _can_run(backend: str, op: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend in ("cpu", "cuda"):
        return device_type == backend and extension_has(op, device_type)
    if backend == "triton":
        return _C is not None and _triton_importable() and (device_type == "cuda" or triton_interpreted())
    return False


# Backends whose kernel for an op gives run-to-run different results on CUDA tensors (float
# atomics in an order the hardware picks). Under ``torch.use_deterministic_algorithms(True)``
# ``auto`` passes over them, and the kernel itself raises (warns, with ``warn_only=True``) when
# named, as PyTorch's own nondeterministic ops do. Kernels with a deterministic mode of their own
# (the Triton soft-logits and pairwise backward passes, ``kmeans_update``) switch to it instead.
NONDETERMINISTIC_CUDA: dict[str, tuple[str, ...]] = {
    "soft_cluster_logits_backward": ("cuda",),  # atomicAdd into grad_centers
}


def resolve(op: str, device_type: str, name: str, deterministic: bool) -> str | None:
    """The backend of ``op`` on ``device_type`` when ``name`` is requested; None: it does not run there."""
    impls = TABLE[op].get(device_type, ())
    if name != "auto":
        return name if name in impls and _can_run(name, op, device_type) else None
    for cand in impls:
        if cand == "triton" and device_type == "cpu":
            continue
        if deterministic and device_type == "cuda" and cand in NONDETERMINISTIC_CUDA.get(op, ()):
            continue
        if _can_run(cand, op, device_type):
            return cand
    return None


# When a fused variant applies. ``magnet_loss_batch`` runs as one call (forward with its gradient)
# within these limits. GPU kernels: at most this many clusters (one Triton register tile) and rows,
# and the means, their gradient and the [N, M] distances within this many bytes (the CUDA kernel's
# one block keeps them in shared memory; the Triton kernels split d over programs). CPU kernels: at
# most FUSED_BATCH_MAX_CPU_ENTRIES = N * M (the [N, M] distance buffer). Beyond them the batch form
# runs as the global form on the batch means.
FUSED_BATCH_MAX_CLUSTERS = 64
FUSED_BATCH_MAX_ROWS = 4096
FUSED_BATCH_MAX_SHARED_BYTES = 96 * 1024
FUSED_BATCH_MAX_CPU_ENTRIES = 1 << 24


def fused_batch_shared_bytes(n: int, m: int, d: int, dtype: torch.dtype) -> int:
    """Shared memory of the CUDA kernel for [n, d] rows in m clusters: the kernel's own formula
    (csrc/magnet_batch_layout.h, exported by the extension); the extension is loaded whenever
    the op layer runs."""
    return _C.magnet_batch_shared_bytes(n, m, d, 8 if dtype == torch.float64 else 4)


def fused_batch_fits(backend: str | None, device_type: str, n: int, m: int, d: int, dtype: torch.dtype) -> bool:
    """``magnet_loss_batch`` of [N, d] rows in M clusters runs fused on ``backend`` (None: it does not run)."""
    if backend is None:
        return False
    if device_type == "cpu" and backend != "triton":
        return n * m <= FUSED_BATCH_MAX_CPU_ENTRIES
    return (_C is not None and m <= FUSED_BATCH_MAX_CLUSTERS and n <= FUSED_BATCH_MAX_ROWS
            and fused_batch_shared_bytes(n, m, d, dtype) <= FUSED_BATCH_MAX_SHARED_BYTES)


# --------------------------------------------------------------------------- the choice, on a change
# The backend of every (op, device type) is chosen when the choice changes (import, use_backend,
# CLUSTR_FAST_BACKEND, torch.use_deterministic_algorithms), not per call. The op layer subscribes
# (``on_choice``) and registers the chosen kernel as the op's kernel for the device's dispatch
# key: the extension's own kernels need nothing; a Triton or reference kernel (a Python function)
# is registered over it, and unregistered when the choice moves back.

_state: tuple | None = None
_chosen: dict[tuple[str, str], str | None] = {}
_subscribers: list[Callable] = []


def on_choice(apply: Callable[[dict, str, list], None]) -> None:
    """Call ``apply(chosen, requested, available)`` on every change of the choice, the next
    :func:`refresh` included: ``chosen`` maps ``(op, device type)`` to its backend (None: the op
    does not run there), ``requested`` is the backend asked for and ``available`` :func:`backends`."""
    global _state
    _subscribers.append(apply)
    _state = None


def chosen(op: str, device_type: str) -> str | None:
    """The backend that runs ``op`` on ``device_type`` now (None: the op does not run there)."""
    refresh()
    return _chosen.get((op, device_type))


def runs(op: str, device: torch.device) -> bool:
    """``op`` has a kernel for ``device``'s type under the current choice (the fused ops' test)."""
    return chosen(op, torch.device(device).type) is not None


def refresh() -> None:
    """Work out the choice again if it changed since the last call (a tuple compare), and hand it
    to the subscribers (:func:`on_choice`)."""
    global _state
    if torch.compiler.is_compiling():
        return
    state = (_override[-1] if _override else os.environ.get("CLUSTR_FAST_BACKEND", "auto"),
             torch.are_deterministic_algorithms_enabled())
    if state == _state:
        return
    name = _check_name(state[0], "backend" if _override else "CLUSTR_FAST_BACKEND")
    for op in TABLE:  # read the extension's kernels before any Python kernel covers them
        for dev in DEVICE_TYPES:
            extension_has(op, dev)
    for op in TABLE:
        for dev in DEVICE_TYPES:
            _chosen[(op, dev)] = resolve(op, dev, name, state[1])
    available = backends()
    for apply in _subscribers:
        apply(_chosen, name, available)
    _state = state
