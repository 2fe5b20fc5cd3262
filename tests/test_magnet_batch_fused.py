"""Fused Magnet-loss batch form (``magnet_loss_batch`` in one call) against the float64 reference."""
import math

import pytest
import torch

import clustr_fast
from clustr_fast import reference
from clustr_fast.ops import magnet_loss as ops
from clustr_fast import _backend
from clustr_fast.ops.magnet_loss import fused_batch_applies, magnet_loss_batch_op

from conftest import assert_close_f64, low_precision_dtypes


def _inputs(n, m, d, dtype, device, *, k=2, seed=0, ids=None, spread=1.0, scale=2.0):
    """n rows in m clusters (every cluster hit when n >= m), k clusters per class."""
    g = torch.Generator().manual_seed(seed)
    if ids is None:
        ids = torch.arange(n) % m
        ids = ids[torch.randperm(n, generator=g)]
    # cluster means O(1) apart whatever d (up to d = 9 as given): far-apart means make every loss 0
    means = torch.randn(m, d, generator=g) * scale * min(1.0, 3.0 / math.sqrt(max(d, 1)))
    feats = means[ids] + spread * torch.randn(n, d, generator=g)
    classes = torch.arange(m) // k
    return feats.to(device=device, dtype=dtype), ids.to(device), classes.to(device)


def _check(dev, dtype, n, m, d, *, k=2, alpha=1.0, variance=None, eps=1e-8, reduction="none", seed=0,
           ids=None, rtol=1e-5, spread=1.0, scale=2.0, feats=None):
    given = feats
    feats, ids, classes = _inputs(n, m, d, dtype, dev, k=k, seed=seed, ids=ids, spread=spread, scale=scale)
    if given is not None:
        feats = given.to(device=dev, dtype=dtype)
    if feats.device.type == "cpu":
        assert fused_batch_applies(feats, m)
    # On a GPU, shapes past the fused kernel's shared-memory and cluster limits
    # (e.g. float64 at 127 x 12 x 512, or 65 clusters) take the unfused path, checked the same way.
    f = feats.detach().clone().requires_grad_(True)
    out = clustr_fast.magnet_loss_batch(f, ids, classes, alpha=alpha, variance=variance, eps=eps,
                                        reduction=reduction)
    f64 = feats.detach().cpu().double().requires_grad_(True)
    ref = reference.magnet_loss_batch(f64, ids.cpu(), classes.cpu(), alpha=alpha, variance=variance, eps=eps,
                                      reduction=reduction)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert_close_f64(out.cpu(), ref, dtype=dtype, rtol=rtol)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) + 1.5
    out.backward(g.to(device=dev, dtype=out.dtype))
    ref.backward(g)
    assert f.grad.dtype == dtype and torch.isfinite(f.grad).all()
    assert_close_f64(f.grad.cpu(), f64.grad, dtype=dtype, rtol=rtol,
                     scale=f64.grad.abs().max().clamp_min(1.0))
    return out, f.grad


# --------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("n,m,d", [(2, 1, 1), (2, 2, 3), (7, 3, 3), (7, 5, 512), (7, 3, 1100), (127, 7, 9), (127, 3, 130),
                                   (127, 12, 512), (60, 65, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64(backend, n, m, d, dtype):
    name, dev = backend
    if name == "triton" and dev.type == "cpu" and n * m * d > 40_000:
        pytest.skip("interpreter time: smaller shapes cover this case (and the GPU tests this one)")
    if name == "triton" and m > _backend.FUSED_BATCH_MAX_CLUSTERS:
        pytest.skip("more clusters than one Triton tile: magnet_loss_batch takes the unfused path")
    variance = 1.3 if n <= m else None  # singleton clusters only: the batch variance is 0
    reduction = "none" if dtype == torch.float32 else "mean"
    out, _ = _check(dev, dtype, n, m, d, reduction=reduction, variance=variance, seed=n + d)
    if n >= 2 * m and m >= 3:  # not an edge case (one class; clusters of one or two rows): losses > 0
        assert (out > 0).float().mean() > 0.25 if reduction == "none" else out > 0, "the check could not fail"


@pytest.mark.parametrize("alpha", [0.0, 1.0, 12.5])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_alpha_eps_clusters_per_class(backend, alpha, eps, k):
    _, dev = backend
    variance = None if (k + int(alpha) + int(eps > 0)) % 2 else 3.0  # both kinds over the grid
    _check(dev, torch.float32, 30, 6, 9, k=k, alpha=alpha, variance=variance, eps=eps,
           reduction="sum", seed=int(alpha * 10) + k, spread=1.5, scale=1.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(backend, reduction):
    _, dev = backend
    for variance in (None, 1.3, torch.tensor(0.9)):
        out, _ = _check(dev, torch.float64, 24, 4, 6, reduction=reduction, alpha=0.5, variance=variance, seed=3,
                        spread=1.5, scale=1.0)
        assert out.dim() == (1 if reduction == "none" else 0)


def test_losses_and_gradients_are_not_trivial(backend):
    _, dev = backend
    out, grad = _check(dev, torch.float64, 40, 6, 5, alpha=1.0, spread=2.0, scale=1.0, seed=6)
    assert (out > 0.1).sum() > 10 and (out == 0).sum() < 40
    assert grad.abs().max() > 1e-2


def test_empty_and_single_sample_clusters(backend):
    """Cluster 1 has one sample, cluster 3 none (no impostor of anyone), cluster 5 none."""
    _, dev = backend
    ids = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 0, 2])
    for variance in (None, 0.8):
        for eps in (0.0, 1e-8):
            for reduction in ("none", "mean"):
                _check(dev, torch.float32, 14, 6, 5, ids=ids, variance=variance, eps=eps, reduction=reduction,
                       seed=11, spread=1.5, scale=1.0)


def test_rows_without_impostor(backend):
    """One class only (k = M): no row has an impostor; eps = 0 gives 0, eps > 0 a finite loss."""
    _, dev = backend
    for eps in (0.0, 1e-8):
        out, grad = _check(dev, torch.float32, 12, 3, 4, k=3, eps=eps, seed=12)
        if eps == 0.0:
            assert (out == 0).all()


def test_huge_distances_stay_finite(backend):
    """Cluster 0 spread +-100 around its mean, impostors near it: own distances of 1e4 sigma^2.

    The linear-space formula gives 0/0 there; the log-space loss is finite and large.
    """
    _, dev = backend
    g = torch.Generator().manual_seed(13)
    feats = torch.randn(30, 4, generator=g)
    ids = torch.arange(30) % 3
    feats[ids == 0, 0] += torch.tensor([100.0, -100.0] * 5)
    feats[ids == 1, 0] += 100.0
    feats[ids == 1, 1] += 5.0
    feats[ids == 2, 1] += 140.0
    for eps in (0.0, 1e-8):
        for variance in (1.0, None):
            out, _ = _check(dev, torch.float32, 30, 3, 4, k=1, ids=ids, eps=eps, variance=variance,
                            seed=13, feats=feats)
            if variance == 1.0:
                assert out.max() > (1e3 if eps == 0.0 else 18.0)


def test_non_contiguous_feats(backend):
    _, dev = backend
    feats, ids, classes = _inputs(20, 4, 12, torch.float32, dev, seed=14)
    f = feats[:, ::2]
    assert not f.is_contiguous()
    out = clustr_fast.magnet_loss_batch(f, ids, classes, reduction="none")
    ref = reference.magnet_loss_batch(f.double().cpu(), ids.cpu(), classes.cpu(), reduction="none")
    assert_close_f64(out.cpu(), ref, dtype=torch.float32)


def _plain_batch(f, ids, classes, alpha, eps=1e-8):
    """The batch Magnet loss in the inputs' dtype (no upcast), log space, batch variance."""
    m = classes.shape[0]
    counts = torch.bincount(ids, minlength=m)
    mu = f.new_zeros(m, f.shape[1]).index_add(0, ids, f) / counts.clamp_min(1).to(f.dtype)[:, None]
    diff = f - mu[ids]
    own = (diff * diff).sum(1)
    s = 0.5 / (own.sum() / (f.shape[0] - 1))
    d = (f[:, None, :] - mu[None, :, :]).square().sum(-1)
    imp = (classes[None, :] != classes[ids][:, None]) & (counts > 0)[None, :]
    lse = torch.logsumexp((-s * d).masked_fill(~imp, float("-inf")), 1)
    le = torch.full_like(lse, math.log(eps))
    return torch.relu(-torch.logaddexp(-s * own - alpha - torch.logaddexp(lse, le), le))


def test_low_precision_inputs(backend):
    name, dev = backend
    for dtype in low_precision_dtypes(name, dev):
        feats, ids, classes = _inputs(40, 6, 19, dtype, dev, seed=7, spread=1.5, scale=1.0)
        for reduction in ("none", "mean"):
            f = feats.detach().clone().requires_grad_(True)
            out = clustr_fast.magnet_loss_batch(f, ids, classes, alpha=1.0, reduction=reduction)
            assert out.dtype == torch.float32
            f64 = feats.detach().cpu().double().requires_grad_(True)
            ref = reference.magnet_loss_batch(f64, ids.cpu(), classes.cpu(), alpha=1.0, reduction=reduction)
            fl = feats.detach().cpu().requires_grad_(True)
            plain = _plain_batch(fl, ids.cpu(), classes.cpu(), alpha=1.0)
            plain = plain if reduction == "none" else plain.mean()
            assert_close_f64(out.cpu(), ref, dtype=dtype, plain=plain)
            g = torch.rand(out.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64) + 0.5
            out.backward(g.to(dev, torch.float32))
            ref.backward(g)
            plain.backward(g.to(dtype))
            assert f.grad.dtype == dtype
            assert_close_f64(f.grad.cpu(), f64.grad, dtype=dtype, plain=fl.grad,
                             scale=f64.grad.abs().max().clamp_min(1.0))


# --------------------------------------------------------------------------- op layer


def test_routing_uses_the_fused_op(backend):
    """Every reduction records the fused op (its autograd, csrc/autograd.cpp); no gradient wanted: none."""
    name, dev = backend
    feats, ids, classes = _inputs(24, 12, 8, torch.float32, dev, seed=15)
    f = feats.requires_grad_(True)
    assert "MagnetLossBatch" in clustr_fast.magnet_loss_batch(f, ids, classes).grad_fn.name()
    rows = clustr_fast.magnet_loss_batch(f, ids, classes, reduction="none")
    assert "MagnetLossBatch" in rows.grad_fn.name()
    with torch.no_grad():  # no gradient wanted: no gradient work
        assert clustr_fast.magnet_loss_batch(f, ids, classes).grad_fn is None


def test_fused_applies_rule():
    f = torch.zeros(240, 512)
    assert fused_batch_applies(f, 12)
    fits = _backend.fused_batch_fits  # the GPU rule: one block / shared memory
    assert fits("cuda", "cuda", 240, 12, 512, torch.float32)
    assert fits("triton", "cuda", 240, 12, 512, torch.float32)
    assert not fits("cuda", "cuda", 240, _backend.FUSED_BATCH_MAX_CLUSTERS + 1, 512, torch.float32)
    assert not fits("cuda", "cuda", _backend.FUSED_BATCH_MAX_ROWS + 1, 2, 4, torch.float32)
    assert not fits("cuda", "cuda", 240, 12, 4096, torch.float32)
    assert not fits(None, "cuda", 240, 12, 512, torch.float32)
    assert fits("cpu", "cpu", 4096, 4096, 1, torch.float32)
    assert not fits("cpu", "cpu", 4097, 4096, 1, torch.float32)


def test_unfused_fallback_still_correct(backend):
    """Above the fused limits (here forced down) magnet_loss_batch runs the two-op path."""
    _, dev = backend
    feats, ids, classes = _inputs(20, 4, 5, torch.float32, dev, seed=16)
    ids = torch.where(ids == 3, 2, ids)  # cluster 3 empty: its "mean" is no impostor (the valid mask)
    old = _backend.FUSED_BATCH_MAX_CPU_ENTRIES, _backend.FUSED_BATCH_MAX_CLUSTERS
    _backend.FUSED_BATCH_MAX_CPU_ENTRIES, _backend.FUSED_BATCH_MAX_CLUSTERS = 0, 0
    try:
        assert not fused_batch_applies(feats, 4)
        f = feats.clone().requires_grad_(True)
        out = clustr_fast.magnet_loss_batch(f, ids, classes, alpha=5.0, reduction="none")
        assert "MagnetLossBatch" not in out.grad_fn.name()
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(17), dtype=torch.float64) + 1.5
        out.backward(g.to(device=dev, dtype=out.dtype))
    finally:
        _backend.FUSED_BATCH_MAX_CPU_ENTRIES, _backend.FUSED_BATCH_MAX_CLUSTERS = old
    f64 = feats.detach().cpu().double().requires_grad_(True)
    ref = reference.magnet_loss_batch(f64, ids.cpu(), classes.cpu(), alpha=5.0, reduction="none")
    ref.backward(g)
    assert (ref > 0).float().mean() > 0.25
    assert_close_f64(out.detach().cpu(), ref.detach(), dtype=torch.float32)
    assert_close_f64(f.grad.cpu(), f64.grad, dtype=torch.float32, scale=f64.grad.abs().max().clamp_min(1.0))
    _check(dev, torch.float32, 20, 4, 5, reduction="mean", seed=16)


def _op_args(dtype=torch.float64, variance=None, value=0.0):
    feats, ids, classes = _inputs(9, 4, 5, dtype, "cpu", seed=18, spread=1.5, scale=1.0)
    return feats, ids, classes, variance, value, 0.7, 1e-8


@pytest.mark.parametrize("var", ["batch", "value", "tensor"])
def test_opcheck_forward_and_backward(backend, var):
    name, dev = backend
    if dev.type != "cpu":
        pytest.skip("opcheck runs on CPU tensors")
    variance = torch.tensor(1.7, dtype=torch.float32) if var == "tensor" else None
    feats, ids, classes, v, value, alpha, eps = _op_args(torch.float32, variance, 1.7 if var == "value" else 0.0)
    f = feats.requires_grad_(True)
    with clustr_fast.use_backend(name):
        torch.library.opcheck(magnet_loss_batch_op, (f, ids, classes, v, value, alpha, eps, None, 1.0 / 9, True))
        torch.library.opcheck(magnet_loss_batch_op, (f, ids, classes, v, value, alpha, eps, None, 1.0, False))
        g = torch.randn(9, generator=torch.Generator().manual_seed(19))
        torch.library.opcheck(magnet_loss_batch_op, (feats.detach(), ids, classes, v, value, alpha, eps, g, 1.0, True))


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_gradcheck_float64(name):
    """Public batch form, every reduction, variance None (through sigma^2) and given."""
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} backend not available")
    feats, ids, classes = _inputs(12, 4, 3, torch.float64, "cpu", seed=21, spread=1.5, scale=1.0)
    feats.requires_grad_(True)
    combos = [(v, r, e) for v in (None, 1.9) for r in ("none", "mean", "sum") for e in (0.0, 1e-8)]
    if name == "reference":
        combos = combos[:2]  # the oracle itself; the extension gets every combination
    with clustr_fast.use_backend(name):
        for variance, reduction, eps in combos:
            if True:
                    assert torch.autograd.gradcheck(
                        lambda a: clustr_fast.magnet_loss_batch(a, ids, classes, alpha=0.3, variance=variance,
                                                                eps=eps, reduction=reduction), (feats,))


def test_kernel_agrees_with_reference_backend_directly():
    """The extension kernel's (losses, total, gradient) for random row weights, against the reference impl."""
    if "cpu" not in clustr_fast.backends():
        pytest.skip("the C++ extension is not built")
    feats, ids, classes = _inputs(33, 7, 6, torch.float64, "cpu", seed=22, spread=1.5, scale=1.0)
    w = torch.randn(33, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    for variance, value in ((None, 0.0), (None, 2.2), (torch.tensor(0.7, dtype=torch.float64), 0.0)):
        args = (feats, ids, classes, variance, value, 2.0, 1e-8, w, 1.0, True)
        with clustr_fast.use_backend("cpu"):
            got = torch.ops.clustr_fast.magnet_loss_batch(*args)
        want = ops._reference_batch(*args)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_variance_tensor_is_constant(backend):
    _, dev = backend
    feats, ids, classes = _inputs(20, 4, 3, torch.float32, dev, seed=24)
    v = torch.tensor(1.5, device=dev, requires_grad=True)
    f = feats.requires_grad_(True)
    out = clustr_fast.magnet_loss_batch(f, ids, classes, variance=v)
    out.backward()
    assert v.grad is None and torch.isfinite(f.grad).all()


def test_bad_inputs_name_the_argument():
    feats, ids, classes = _inputs(6, 3, 4, torch.float32, "cpu")
    mb = clustr_fast.magnet_loss_batch
    with pytest.raises(ValueError, match="cluster_ids"):
        mb(feats, ids + 3, classes)
    with pytest.raises(ValueError, match="feats"):
        mb(feats[:1], ids[:1], classes)
    with pytest.raises(ValueError, match="variance"):
        mb(feats, ids, classes, variance=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        mb(feats, ids, classes, reduction="max")
    with pytest.raises(TypeError, match="cluster_classes"):
        mb(feats, ids, classes.float())


def test_torch_compile_fullgraph():
    feats, ids, classes = _inputs(20, 4, 6, torch.float32, "cpu", seed=25)

    @torch.compile(fullgraph=True, backend="eager")
    def step(x):
        return clustr_fast.magnet_loss_batch(x, ids, classes, alpha=1.0)

    x1 = feats.clone().requires_grad_(True)
    x2 = feats.clone().requires_grad_(True)
    step(x1).backward()
    clustr_fast.magnet_loss_batch(x2, ids, classes, alpha=1.0).backward()
    torch.testing.assert_close(x1.grad, x2.grad)


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_gpu_clustr_batch(name):
    """The ClusTR batch (12 x 20 x 512) and odd shapes on the GPU backends, values and gradients."""
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} backend not available")
    with clustr_fast.use_backend(name):
        for reduction in ("mean", "none"):
            for variance in (None, 40.0):
                _check("cuda", torch.float32, 240, 12, 512, alpha=12.5, variance=variance, reduction=reduction,
                       seed=30, rtol=2e-5, spread=3.0, scale=1.0)
        for n, m, d in ((2, 1, 1), (7, 3, 3), (127, 3, 130), (127, 64, 33), (1000, 12, 40)):
            for dtype in (torch.float32, torch.float64):
                _check("cuda", dtype, n, m, d, reduction="sum", seed=n, rtol=2e-5)
        _check("cuda", torch.float32, 14, 6, 5, ids=torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 0, 2]),
               seed=31, spread=1.5, scale=1.0)
        _check("cuda", torch.float32, 30, 3, 4, k=1, ids=torch.arange(30) % 3, eps=0.0, variance=1.0, seed=32,
               scale=60.0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_low_precision(name, dtype):
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} backend not available")
    feats, ids, classes = _inputs(240, 12, 512, dtype, "cuda", seed=33, spread=3.0, scale=1.0)
    with clustr_fast.use_backend(name):
        f = feats.detach().clone().requires_grad_(True)
        out = clustr_fast.magnet_loss_batch(f, ids, classes, alpha=1.0)
        out.backward()
    f64 = feats.detach().cpu().double().requires_grad_(True)
    ref = reference.magnet_loss_batch(f64, ids.cpu(), classes.cpu(), alpha=1.0)
    ref.backward()
    fl = feats.detach().cpu().requires_grad_(True)
    plain = _plain_batch(fl, ids.cpu(), classes.cpu(), alpha=1.0).mean()
    plain.backward()
    assert_close_f64(out.cpu(), ref, dtype=dtype, plain=plain)
    assert_close_f64(f.grad.cpu(), f64.grad, dtype=dtype, plain=fl.grad, scale=f64.grad.abs().max().clamp_min(1.0))
