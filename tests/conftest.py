"""Shared test fixtures: which backends run here, devices, tolerances.

Without a GPU the Triton kernels run under the interpreter (TRITON_INTERPRET=1,
set here before Triton is imported).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import clustr_fast  # noqa: E402
from clustr_fast import _backend  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def runnable_backends():
    """Backends that can run here, with the device their tensors live on."""
    out = [("reference", "cpu")]
    avail = _backend.backends()
    if "cpu" in avail:
        out.append(("cpu", "cpu"))
    if "triton" in avail:
        out.append(("triton", "cuda" if HAS_CUDA else "cpu"))
    if "cuda" in avail:
        out.append(("cuda", "cuda"))
    return out


def _backend_params():
    params = []
    for name, dev in runnable_backends():
        marks = [pytest.mark.gpu] if dev == "cuda" else []
        params.append(pytest.param((name, dev), id=name, marks=marks))
    return params


@pytest.fixture(params=_backend_params())
def backend(request):
    """(name, device) for each backend that runs here; ops run inside use_backend(name)."""
    name, dev = request.param
    with clustr_fast.use_backend(name):
        yield name, torch.device(dev)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def low_precision_dtypes(backend_name, device):
    """float16 everywhere; bfloat16 except for Triton under the interpreter."""
    out = [torch.float16]
    if not (backend_name == "triton" and device.type == "cpu"):
        out.append(torch.bfloat16)
    return out


def assert_close_f64(out, ref64, *, dtype, plain=None, rtol=1e-5, scale=None):
    """Compare ``out`` with a float64 reference.

    float32/float64: |out - ref| <= rtol * scale (scale defaults to max(|ref|, 1)).
    float16/bfloat16: error at most 2x the plain-PyTorch error ``plain`` (computed
    in that dtype) plus a small float32 floor.
    """
    out64 = out.detach().to(torch.float64)
    ref64 = ref64.detach().to(torch.float64)
    assert out64.shape == ref64.shape, (out64.shape, ref64.shape)
    assert torch.isfinite(out64).all() or not torch.isfinite(ref64).all()
    if scale is None:
        scale = ref64.abs().clamp_min(1.0)
    err = ((out64 - ref64).abs() / scale).max().item() if out64.numel() else 0.0
    if dtype in (torch.float16, torch.bfloat16):
        assert plain is not None
        plain_err = ((plain.detach().to(torch.float64) - ref64).abs() / scale).max().item()
        assert err <= 2 * plain_err + 1e-5, f"error {err:.3e} > 2x plain {dtype} error {plain_err:.3e}"
    else:
        assert err <= rtol, f"relative error {err:.3e} > {rtol:.1e}"
