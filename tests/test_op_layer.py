"""The op layer: each op defined once, one backend table, the choice made on a change, not per call."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import clustr_fast
from clustr_fast import _backend
from clustr_fast.ops import _library

needs_extension = pytest.mark.skipif("cpu" not in clustr_fast.backends(), reason="needs the C++ extension")


def test_every_table_op_is_defined_once_with_python_kernels():
    assert set(_library.PYTHON_KERNELS) == set(_backend.TABLE)
    for op in _backend.TABLE:
        schema = getattr(torch.ops.clustr_fast, op).default._schema
        assert schema.name == f"clustr_fast::{op}"
        assert "reference" in _library.PYTHON_KERNELS[op]
        for dev, impls in _backend.TABLE[op].items():
            assert dev in _backend.DEVICE_TYPES and set(impls) <= set(_backend.NAMES)
            if "triton" in impls:
                assert "triton" in _library.PYTHON_KERNELS[op], op
    with pytest.raises(AttributeError):  # no second namespace of kernels
        torch.ops.clustr_fast_C.pairwise_sqdist  # noqa: B018


@needs_extension
def test_extension_registers_kernels_and_autograd():
    for op, devices in _backend.TABLE.items():
        if "cpu" in devices.get("cpu", ()):
            assert _backend.extension_has(op, "cpu"), op
    for op in ("pairwise_sqdist", "soft_cluster_logits", "magnet_loss_fwd", "magnet_loss_fused", "magnet_loss_batch"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"clustr_fast::{op}", "Autograd"), op


@pytest.fixture
def registrations(monkeypatch):
    calls = []
    real = _library.register_kernel

    def counting(op, dev, fn):
        calls.append((op, dev))
        return real(op, dev, fn)

    monkeypatch.setattr(_library, "register_kernel", counting)
    return calls


def _calls():
    x = torch.randn(9, 4, requires_grad=True)
    c = torch.randn(3, 4, requires_grad=True)
    cls = torch.tensor([0, 1, 1])
    out = clustr_fast.pairwise_sqdist(x, c).sum() + clustr_fast.soft_cluster_logits(
        x, c, cls, 2, variance=1.0, top_d=2).logsumexp(1).sum()
    out = out + clustr_fast.magnet_loss(x, c, torch.arange(9) % 3, cls)
    out.backward()
    clustr_fast.kmeans_assign(x.detach(), c.detach())
    return x.grad


def test_choice_is_made_on_a_change_not_per_call(registrations, monkeypatch):
    _calls()
    del registrations[:]
    for _ in range(3):
        _calls()
    assert registrations == []  # calls under an unchanged choice register nothing
    with clustr_fast.use_backend("reference"):
        n = len(registrations)
        assert n > 0 and {dev for _, dev in registrations} <= {"cpu", "cuda"}
        assert _backend.chosen("pairwise_sqdist", "cpu") == "reference"
        _calls()
        _calls()
        assert len(registrations) == n
    monkeypatch.setenv("CLUSTR_FAST_BACKEND", "reference")
    n = len(registrations)
    _calls()  # the first call after the change registers the reference kernels again
    assert len(registrations) > n and _backend.chosen("pairwise_sqdist", "cpu") == "reference"
    monkeypatch.setenv("CLUSTR_FAST_BACKEND", "auto")
    _calls()
    expected = "cpu" if "cpu" in clustr_fast.backends() else "reference"
    assert _backend.chosen("pairwise_sqdist", "cpu") == expected


@needs_extension
def test_backends_give_the_same_gradients_through_one_autograd():
    torch.manual_seed(3)
    got = {}
    for name in ("cpu", "reference"):
        torch.manual_seed(3)
        with clustr_fast.use_backend(name):
            got[name] = _calls()
    torch.testing.assert_close(got["cpu"], got["reference"], rtol=1e-4, atol=1e-5)


def test_named_backend_without_a_kernel_raises_naming_it():
    from clustr_fast.ops.kmeans import kmeans_lloyd_step_op
    x = torch.randn(10, 3)
    if "triton" not in clustr_fast.backends():
        pytest.skip("needs Triton (interpreted)")
    with clustr_fast.use_backend("triton"):
        assert not _backend.runs("kmeans_lloyd_step", x.device)
        with pytest.raises(RuntimeError, match="'triton' cannot run kmeans_lloyd_step on cpu"):
            kmeans_lloyd_step_op(x, x[:2].clone(), 0, None, 0)


def test_without_the_extension_the_reference_runs():
    """CLUSTR_FAST_NO_EXT=1: the public functions run the plain reference (gradients included)."""
    code = textwrap.dedent("""
        import warnings, torch, clustr_fast
        from clustr_fast import reference as R
        assert clustr_fast.backends() == ["reference"], clustr_fast.backends()
        torch.manual_seed(0)
        x = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
        c = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
        cls, a = torch.tensor([0, 0, 1, 1]), torch.arange(20) % 4
        for f, g in ((lambda x, c: clustr_fast.magnet_loss(x, c, a, cls), lambda x, c: R.magnet_loss(x, c, a, cls)),
                     (lambda x, c: clustr_fast.pairwise_sqdist(x, c).sum(), lambda x, c: R.pairwise_sqdist(x, c).sum()),
                     (lambda x, c: clustr_fast.soft_cluster_logits(x, c, cls, 2, variance=1.0)[:, 0].sum(),
                      lambda x, c: R.soft_cluster_logits(x, c, cls, 2, variance=1.0)[:, 0].sum())):
            got, want = torch.autograd.grad(f(x, c), (x, c)), torch.autograd.grad(g(x, c), (x, c))
            for u, v in zip(got, want):
                torch.testing.assert_close(u, v)
        torch.testing.assert_close(clustr_fast.kmeans_assign(x.detach(), c.detach())[0],
                                   R.kmeans_assign(x.detach(), c.detach())[0])
        print("ok")
    """)
    env = dict(os.environ, CLUSTR_FAST_NO_EXT="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_bad_backend_variable_names_it(monkeypatch):
    monkeypatch.setenv("CLUSTR_FAST_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="CLUSTR_FAST_BACKEND"):
        clustr_fast.pairwise_sqdist(torch.randn(3, 2), torch.randn(2, 2))
    monkeypatch.setenv("CLUSTR_FAST_BACKEND", "auto")
    assert clustr_fast.pairwise_sqdist(torch.randn(3, 2), torch.randn(2, 2)).shape == (3, 2)


@pytest.mark.parametrize("name", ["cpu", "reference"])
@pytest.mark.parametrize("with_grad", [True, False])
def test_batch_op_autograd_through_both_outputs(name, with_grad):
    """csrc/autograd.cpp's three backward paths of magnet_loss_batch (saved gradient, rerun with row
    weights, both outputs used) against numerical derivatives in float64 (gradcheck)."""
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} backend not available")
    from clustr_fast.ops.magnet_loss import magnet_loss_batch_op
    g = torch.Generator().manual_seed(31)
    feats = (torch.randn(11, 3, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    ids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2])
    classes = torch.tensor([0, 0, 1, 1])
    u = torch.randn(11, generator=g, dtype=torch.float64)
    rw = torch.rand(11, generator=g, dtype=torch.float64) + 0.5
    with clustr_fast.use_backend(name):
        for row_weight, weight in ((None, 0.3), (rw, 1.0)):
            def total(f):
                return magnet_loss_batch_op(f, ids, classes, None, 0.0, 0.7, 1e-8, row_weight, weight, with_grad)[1]

            def both(f):
                loss, tot, _ = magnet_loss_batch_op(f, ids, classes, None, 0.0, 0.7, 1e-8, row_weight, weight,
                                                    with_grad)
                return (loss * u).sum() + 2.5 * tot

            def rows(f):
                return magnet_loss_batch_op(f, ids, classes, None, 0.0, 0.7, 1e-8, row_weight, weight, with_grad)[0]

            assert (rows(feats) > 0).sum() >= 3  # losses and gradients that are not trivially zero
            for fn in (total, both, rows):
                assert torch.autograd.gradcheck(fn, (feats,), eps=1e-6, atol=1e-6)
