"""magnet_loss / magnet_loss_batch on every backend that runs here, against float64."""
import math

import pytest
import torch

import clustr_fast
from clustr_fast import reference
from clustr_fast.nn import MagnetLoss
from clustr_fast.ops.magnet_loss import magnet_loss_bwd_op, magnet_loss_fused_op, magnet_loss_fwd_op

from conftest import assert_close_f64, low_precision_dtypes


def _global_inputs(n, c, d, dtype, device, k_per_class=2, seed=0, spread=1.0):
    """feats near their assigned centers, centers of C // k classes (at least one class)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 2.0
    classes = torch.arange(c) // k_per_class
    assign = torch.randint(0, c, (n,), generator=g)
    feats = centers[assign] + spread * torch.randn(n, d, generator=g)
    return (feats.to(device=device, dtype=dtype), centers.to(device=device, dtype=dtype),
            assign.to(device), classes.to(device))


def _batch_inputs(m, per, d, dtype, device, k_per_class=2, seed=0):
    """m clusters x per samples (shuffled), cluster classes k_per_class clusters per class."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(m, d, generator=g) * 2.0
    ids = torch.arange(m).repeat_interleave(per)[torch.randperm(m * per, generator=g)]
    feats = means[ids] + torch.randn(m * per, d, generator=g)
    classes = torch.arange(m) // k_per_class
    return feats.to(device=device, dtype=dtype), ids.to(device), classes.to(device)


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _f64(t):
    return t.detach().cpu().double().requires_grad_(True)


def _check_global(dev, dtype, n, c, d, *, k=2, alpha=1.0, variance=None, eps=1e-8, reduction="none",
                  seed=0, spread=1.0, rtol=1e-5):
    feats, centers, assign, classes = _global_inputs(n, c, d, dtype, dev, k, seed, spread)
    f, mu = _leaf(feats), _leaf(centers)
    out = clustr_fast.magnet_loss(f, mu, assign, classes, alpha=alpha, variance=variance, eps=eps,
                                  reduction=reduction)
    f64, mu64 = _f64(feats), _f64(centers)
    ref = reference.magnet_loss(f64, mu64, assign.cpu(), classes.cpu(), alpha=alpha, variance=variance,
                                eps=eps, reduction=reduction)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(out).all()
    assert_close_f64(out.cpu(), ref, dtype=dtype, rtol=rtol)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    out.backward(g.to(device=dev, dtype=out.dtype))
    ref.backward(g)
    for got, want in ((f.grad, f64.grad), (mu.grad, mu64.grad)):
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert_close_f64(got.cpu(), want, dtype=dtype, rtol=rtol, scale=want.abs().max().clamp_min(1.0))
    return out


def _check_batch(dev, dtype, m, per, d, *, k=2, alpha=1.0, variance=None, eps=1e-8, reduction="none",
                 seed=0, rtol=1e-5, ids=None):
    feats, cids, classes = _batch_inputs(m, per, d, dtype, dev, k, seed)
    if ids is not None:
        cids = ids.to(dev)
    f = _leaf(feats)
    out = clustr_fast.magnet_loss_batch(f, cids, classes, alpha=alpha, variance=variance, eps=eps,
                                        reduction=reduction)
    f64 = _f64(feats)
    ref = reference.magnet_loss_batch(f64, cids.cpu(), classes.cpu(), alpha=alpha, variance=variance,
                                      eps=eps, reduction=reduction)
    assert torch.isfinite(out).all()
    assert_close_f64(out.cpu(), ref, dtype=dtype, rtol=rtol)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    out.backward(g.to(device=dev, dtype=out.dtype))
    ref.backward(g)
    assert f.grad.dtype == dtype and torch.isfinite(f.grad).all()
    assert_close_f64(f.grad.cpu(), f64.grad, dtype=dtype, rtol=rtol, scale=f64.grad.abs().max().clamp_min(1.0))
    return out


# --------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("n,c,d", [(1, 3, 3), (7, 3, 3), (127, 65, 130), (1000, 3, 7), (33, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_matches_float64(backend, n, c, d, dtype):
    name, dev = backend
    if name == "triton" and dev.type == "cpu" and dtype == torch.float64 and n * c * d > 10_000:
        pytest.skip("interpreter time: the float32 case covers this shape")
    variance = 1.3 if n < 2 else None
    _check_global(dev, dtype, n, c, d, variance=variance, seed=n + c)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 12.5])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_global_alpha_eps_clusters_per_class(backend, alpha, eps, k):
    _, dev = backend
    for variance in (None, 2.5):
        _check_global(dev, torch.float32, 45, 12, 9, k=k, alpha=alpha, variance=variance, eps=eps,
                      seed=int(alpha * 10) + k)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 12.5])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_batch_alpha_eps_clusters_per_class(backend, alpha, eps, k):
    _, dev = backend
    for variance in (None, 1.7):
        _check_batch(dev, torch.float32, 6, 5, 11, k=k, alpha=alpha, variance=variance, eps=eps,
                     seed=int(alpha * 10) + k)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_both_forms(backend, reduction):
    _, dev = backend
    out = _check_global(dev, torch.float32, 31, 6, 5, reduction=reduction, alpha=0.5, seed=3)
    assert out.dim() == (1 if reduction == "none" else 0)
    out = _check_batch(dev, torch.float64, 4, 7, 3, reduction=reduction, alpha=0.5, seed=4)
    assert out.dim() == (1 if reduction == "none" else 0)


def test_batch_clustr_shape_float64(backend):
    _, dev = backend
    _check_batch(dev, torch.float64, 12, 20, 33, alpha=12.5, seed=5)


def test_losses_are_not_trivial(backend):
    """The checks above compare real numbers: some losses and gradients are clearly non-zero."""
    _, dev = backend
    out = _check_global(dev, torch.float64, 60, 6, 4, alpha=1.0, spread=2.0, seed=6)
    assert (out > 0.1).sum() > 10 and (out == 0).sum() < 60


def test_low_precision_inputs(backend):
    name, dev = backend
    for dtype in low_precision_dtypes(name, dev):
        feats, centers, assign, classes = _global_inputs(50, 8, 19, dtype, dev, seed=7)
        f, mu = _leaf(feats), _leaf(centers)
        out = clustr_fast.magnet_loss(f, mu, assign, classes, alpha=1.0, reduction="none")
        assert out.dtype == torch.float32
        f64, mu64 = _f64(feats), _f64(centers)
        ref = reference.magnet_loss(f64, mu64, assign.cpu(), classes.cpu(), alpha=1.0, reduction="none")
        # plain PyTorch in that dtype: the reference formula evaluated without upcasting
        fl, ml = _leaf(feats.cpu()), _leaf(centers.cpu())
        plain = _plain_magnet(fl, ml, assign.cpu(), classes.cpu(), alpha=1.0)
        assert_close_f64(out.cpu(), ref, dtype=dtype, plain=plain)
        g = torch.randn(50, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        out.backward(g.to(dev, torch.float32))
        ref.backward(g)
        plain.backward(g.to(dtype))
        for got, want, pl in ((f.grad, f64.grad, fl.grad), (mu.grad, mu64.grad, ml.grad)):
            assert got.dtype == dtype
            assert_close_f64(got.cpu(), want, dtype=dtype, plain=pl, scale=want.abs().max().clamp_min(1.0))


def _plain_magnet(f, mu, assign, classes, alpha, eps=1e-8):
    """The Magnet loss in the inputs' dtype (no upcast), log space, variance from the batch."""
    diff = f - mu[assign]
    own = (diff * diff).sum(1)
    var = own.sum() / (f.shape[0] - 1)
    s = 0.5 / var
    d = (f[:, None, :] - mu[None, :, :]).square().sum(-1)
    imp = classes[None, :] != classes[assign][:, None]
    z = (-s * d).masked_fill(~imp, float("-inf"))
    lse = torch.logsumexp(z, 1)
    le = torch.full_like(lse, math.log(eps))
    b = torch.logaddexp(lse, le)
    return torch.relu(-torch.logaddexp(-s * own - alpha - b, le))


# --------------------------------------------------------------------------- edge cases


def test_rows_without_impostor(backend):
    """Class 0 has every center but one; rows of a single-class set have no impostor."""
    _, dev = backend
    for eps in (0.0, 1e-8):
        # one class only: no row has an impostor
        feats, centers, assign, _ = _global_inputs(20, 4, 3, torch.float32, dev, seed=9)
        classes = torch.zeros(4, dtype=torch.long, device=dev)
        f = _leaf(feats)
        out = clustr_fast.magnet_loss(f, centers, assign, classes, eps=eps, reduction="none")
        ref = reference.magnet_loss(feats.double().cpu(), centers.double().cpu(), assign.cpu(), classes.cpu(),
                                    eps=eps, reduction="none")
        assert torch.isfinite(out).all()
        assert_close_f64(out.cpu(), ref, dtype=torch.float32)
        out.sum().backward()
        assert torch.isfinite(f.grad).all()
        # mixed: a few rows in a class that owns all but one center
        _check_global(dev, torch.float32, 30, 5, 4, k=4, eps=eps, seed=10)


def test_batch_single_sample_cluster_and_empty_cluster(backend):
    _, dev = backend
    ids = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 4, 4, 4, 4])  # cluster 1: one sample, cluster 3: empty
    for variance in (None, 0.8):
        _check_batch(dev, torch.float32, 6, 2, 5, ids=ids, variance=variance, seed=11)
        _check_batch(dev, torch.float64, 6, 2, 5, ids=ids, variance=variance, eps=0.0, seed=12)


def test_huge_distances_stay_finite(backend):
    """Impostors at up to 1e4 sigma^2: the plain formula underflows, the log-space one does not."""
    _, dev = backend
    g = torch.Generator().manual_seed(13)
    d = 4
    centers = torch.tensor([[0.0] * d, [100.0] + [0.0] * (d - 1), [0.0, 140.0] + [0.0] * (d - 2)])
    classes = torch.tensor([0, 1, 2])
    assign = torch.randint(0, 3, (30,), generator=g)
    feats = centers[assign] + torch.randn(30, d, generator=g)
    feats[:10] = centers[(assign[:10] + 1) % 3] + torch.randn(10, d, generator=g)  # far from their own center
    for eps in (0.0, 1e-8):
        for variance in (1.0, None):
            f, mu = _leaf(feats.to(dev)), _leaf(centers.to(dev))
            out = clustr_fast.magnet_loss(f, mu, assign.to(dev), classes.to(dev), alpha=1.0,
                                          variance=variance, eps=eps, reduction="none")
            f64, mu64 = _f64(feats), _f64(centers)
            ref = reference.magnet_loss(f64, mu64, assign, classes, alpha=1.0, variance=variance, eps=eps,
                                        reduction="none")
            assert torch.isfinite(out).all()
            assert_close_f64(out.cpu(), ref, dtype=torch.float32)
            out.sum().backward()
            ref.sum().backward()
            assert torch.isfinite(f.grad).all() and torch.isfinite(mu.grad).all()
            assert_close_f64(f.grad.cpu(), f64.grad, dtype=torch.float32, scale=f64.grad.abs().max().clamp_min(1.0))
            if eps == 0.0 and variance == 1.0:
                # the plain (linear-space) formula is 0/0 here, the log-space loss is finite and large
                assert out.max() > 1e3


def test_non_contiguous_inputs(backend):
    _, dev = backend
    feats, centers, assign, classes = _global_inputs(40, 6, 12, torch.float32, dev, seed=14)
    f = feats[:, ::2]
    mu = centers.t().contiguous().t()[:, ::2]
    assert not f.is_contiguous() and not mu.is_contiguous()
    out = clustr_fast.magnet_loss(f, mu, assign, classes, reduction="none")
    ref = reference.magnet_loss(f.double().cpu(), mu.double().cpu(), assign.cpu(), classes.cpu(), reduction="none")
    assert_close_f64(out.cpu(), ref, dtype=torch.float32)


def test_variance_tensor_is_constant(backend):
    _, dev = backend
    feats, centers, assign, classes = _global_inputs(20, 4, 3, torch.float32, dev, seed=15)
    v = torch.tensor(1.5, device=dev, requires_grad=True)
    out = clustr_fast.magnet_loss(feats, centers, assign, classes, variance=v)
    assert not out.requires_grad
    ref = reference.magnet_loss(feats.cpu().double(), centers.cpu().double(), assign.cpu(), classes.cpu(),
                                variance=1.5)
    assert_close_f64(out.cpu(), ref, dtype=torch.float32)


# --------------------------------------------------------------------------- module, checks, ops


def test_module_wraps_both_forms(backend):
    _, dev = backend
    feats, ids, classes = _batch_inputs(4, 5, 6, torch.float32, dev, seed=16)
    crit = MagnetLoss(alpha=2.0)
    got = crit(feats, ids, classes)
    want = reference.magnet_loss_batch(feats.double().cpu(), ids.cpu(), classes.cpu(), alpha=2.0)
    assert_close_f64(got.cpu(), want, dtype=torch.float32)
    centers = torch.randn(4, 6, generator=torch.Generator().manual_seed(17)).to(dev)
    got = crit(feats, ids, classes, centers=centers, variance=1.1)
    want = reference.magnet_loss(feats.double().cpu(), centers.double().cpu(), ids.cpu(), classes.cpu(),
                                 alpha=2.0, variance=1.1)
    assert_close_f64(got.cpu(), want, dtype=torch.float32)


def test_bad_inputs_name_the_argument():
    feats, centers, assign, classes = _global_inputs(6, 3, 4, torch.float32, "cpu")
    ml = clustr_fast.magnet_loss
    with pytest.raises(ValueError, match="assign"):
        ml(feats, centers, assign + 3, classes)
    with pytest.raises(ValueError, match="assign"):
        ml(feats, centers, assign - 1 - assign.max(), classes)
    with pytest.raises(ValueError, match="feats"):
        ml(feats[:1], centers, assign[:1], classes)  # N < 2 with variance=None
    with pytest.raises(ValueError, match="centers"):
        ml(feats, centers[:, :3], assign, classes)
    with pytest.raises(ValueError, match="center_classes"):
        ml(feats, centers, assign, classes[:2])
    with pytest.raises(TypeError, match="centers"):
        ml(feats, centers.double(), assign, classes)
    with pytest.raises(TypeError, match="assign"):
        ml(feats, centers, assign.float(), classes)
    with pytest.raises(ValueError, match="variance"):
        ml(feats, centers, assign, classes, variance=0.0)
    with pytest.raises(ValueError, match="eps"):
        ml(feats, centers, assign, classes, eps=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        ml(feats, centers, assign, classes, reduction="max")
    with pytest.raises(ValueError, match="feats"):
        ml(feats[0], centers, assign, classes)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="centers"):
            ml(feats, centers.cuda(), assign, classes)
    else:
        with pytest.raises(ValueError, match="centers"):
            ml(feats, centers.to("meta"), assign, classes)
    f, ids, cls = _batch_inputs(3, 2, 4, torch.float32, "cpu")
    mb = clustr_fast.magnet_loss_batch
    with pytest.raises(ValueError, match="cluster_ids"):
        mb(f, ids + 5, cls)
    with pytest.raises(ValueError, match="feats"):
        mb(f[:1], ids[:1], cls)
    with pytest.raises(ValueError, match="cluster_ids"):
        mb(f, ids[:-1], cls)
    with pytest.raises(TypeError, match="cluster_classes"):
        mb(f, ids, cls.float())
    with pytest.raises(TypeError, match="feats"):
        mb(f.long(), ids, cls)


def _op_args(dtype=torch.float32, valid=False):
    feats, centers, assign, classes = _global_inputs(9, 4, 5, dtype, "cpu", seed=18)
    v = (torch.arange(4) != 2) if valid else None
    return feats, centers, assign, classes, v, torch.tensor(1.7, dtype=dtype)


@pytest.mark.parametrize("valid", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_opcheck_forward_and_backward(backend, valid, eps):
    name, dev = backend
    if dev.type != "cpu":
        pytest.skip("opcheck runs on CPU tensors")
    feats, centers, assign, classes, v, var = _op_args(valid=valid)
    args = (feats.requires_grad_(True), centers.requires_grad_(True), assign, classes, v,
            var.requires_grad_(True), 1.0, eps)
    torch.library.opcheck(magnet_loss_fwd_op, args)
    loss, stats = magnet_loss_fwd_op(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    g = torch.randn(9, generator=torch.Generator().manual_seed(19))
    torch.library.opcheck(magnet_loss_bwd_op, (g, feats.detach(), centers.detach(), assign, classes, v,
                                               var.detach(), loss, stats, 1.0, eps))


@pytest.mark.parametrize("valid", [False, True])
def test_gradcheck_float64(valid):
    """CPU extension: gradients in feats, centers and the variance tensor vs finite differences."""
    if "cpu" not in clustr_fast.backends():
        pytest.skip("the C++ extension is not built")
    dev = torch.device("cpu")
    feats, centers, assign, classes, v, var = _op_args(torch.float64, valid=valid)
    feats, centers, var = (t.to(dev).requires_grad_(True) for t in (feats, centers, var))
    assign, classes = assign.to(dev), classes.to(dev)
    v = v.to(dev) if v is not None else None
    for eps in (0.0, 1e-8):
        def f(a, b, s):
            return magnet_loss_fwd_op(a, b, assign, classes, v, s, 0.5, eps)[0]
        with clustr_fast.use_backend("cpu"):
            assert torch.autograd.gradcheck(f, (feats, centers, var))


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_gradcheck_public_forms_float64(name):
    """variance=None: the gradient through sigma^2 (and, batch form, through the means)."""
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} backend not available")
    dev = torch.device("cpu")
    scope = clustr_fast.use_backend(name)
    scope.__enter__()
    feats, centers, assign, classes = _global_inputs(8, 4, 3, torch.float64, dev, seed=20)
    feats, centers = feats.requires_grad_(True), centers.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: clustr_fast.magnet_loss(a, b, assign, classes, alpha=0.3, reduction="none"), (feats, centers))
    f, ids, cls = _batch_inputs(4, 3, 3, torch.float64, dev, seed=21)
    f.requires_grad_(True)
    try:
        assert torch.autograd.gradcheck(
            lambda a: clustr_fast.magnet_loss_batch(a, ids, cls, alpha=0.3, reduction="none"), (f,))
    finally:
        scope.__exit__(None, None, None)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("variance", [None, 0.8])
@pytest.mark.parametrize("valid", [False, True])
def test_fused_global_equals_forward_then_backward(backend, reduction, variance, valid):
    """The fused op (forward with its gradient, CPU backends) against the fwd + bwd ops, on odd shapes."""
    name, dev = backend
    if dev.type != "cpu" or name == "triton":
        pytest.skip("the fused global form runs on the cpu and reference backends")
    feats, centers, assign, classes = _global_inputs(301, 13, 37, torch.float32, dev, seed=40)
    v = (torch.arange(13) % 5 != 3) if valid else None
    var = torch.tensor(2.3) if variance is None else torch.tensor(variance)
    weight = 1.0 / 301 if reduction == "mean" else 1.0
    for eps in (0.0, 1e-8):
        total, gf, gc, gv = magnet_loss_fused_op(feats, centers, assign, classes, v, var, 0.7, eps, weight)
        loss, stats = magnet_loss_fwd_op(feats, centers, assign, classes, v, var, 0.7, eps)
        wf, wc, wv = magnet_loss_bwd_op(torch.full_like(loss, weight), feats, centers, assign, classes, v, var,
                                        loss, stats, 0.7, eps)
        torch.testing.assert_close(total, loss.double().sum().float() * weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gf, wf, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gc, wc, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gv, wv, rtol=1e-4, atol=1e-7)
    # the public function takes the fused path when a gradient is wanted: same values as float64
    f, c = _leaf(feats), _leaf(centers)
    out = clustr_fast.magnet_loss(f, c, assign, classes, alpha=0.7, variance=variance, reduction=reduction)
    out.backward()
    f64, c64 = _leaf(feats.double()), _leaf(centers.double())
    want = reference.magnet_loss(f64, c64, assign, classes, alpha=0.7, variance=variance, reduction=reduction)
    want.backward()
    torch.testing.assert_close(out.double(), want.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f.grad.double(), f64.grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(c.grad.double(), c64.grad, rtol=1e-3, atol=1e-6)


def test_fused_global_opcheck_and_gradcheck():
    """var given, and var=None (the cluster variance computed and differentiated inside the op)."""
    feats, centers, assign, classes, v, var = _op_args(torch.float64, valid=True)
    torch.library.opcheck(magnet_loss_fused_op, (feats, centers, assign, classes, v, var, 1.0, 1e-8, 0.25))
    torch.library.opcheck(magnet_loss_fused_op, (feats, centers, assign, classes, v, None, 1.0, 1e-8, 0.25))
    feats, centers, var = (t.requires_grad_(True) for t in (feats, centers, var))
    for name in ("reference", "cpu"):
        if name not in clustr_fast.backends():
            continue
        with clustr_fast.use_backend(name):
            assert torch.autograd.gradcheck(
                lambda a, b, s: magnet_loss_fused_op(a, b, assign, classes, v, s, 0.5, 1e-8, 0.25)[0],
                (feats, centers, var))
            assert torch.autograd.gradcheck(
                lambda a, b: magnet_loss_fused_op(a, b, assign, classes, v, None, 0.5, 1e-8, 0.25)[0],
                (feats, centers))
            for eps in (0.0, 1e-8):  # var=None equals the fused op on the cluster variance, chained by autograd
                a, b = _leaf(feats), _leaf(centers)
                got = magnet_loss_fused_op(a, b, assign, classes, v, None, 0.5, eps, 0.25)[0]
                ga, gb = torch.autograd.grad(got, (a, b))
                a2, b2 = _leaf(feats), _leaf(centers)
                s2 = clustr_fast.cluster_variance(a2, b2, assign)
                want = magnet_loss_fused_op(a2, b2, assign, classes, v, s2, 0.5, eps, 0.25)[0]
                wa, wb = torch.autograd.grad(want, (a2, b2))
                torch.testing.assert_close(got, want)
                torch.testing.assert_close(ga, wa)
                torch.testing.assert_close(gb, wb)


@pytest.mark.parametrize("chunk", [None, 7 * 33, 1])
def test_cluster_variance_chunks_match_float64(chunk, monkeypatch):
    """cluster_variance in row chunks (7 rows, one row per chunk) or in one pass: value and
    gradients against float64 autograd of the plain expression; gradcheck in float64."""
    from clustr_fast.ops import cluster_means as cm
    if chunk is not None:
        monkeypatch.setattr(cm, "CHUNK_ENTRIES", chunk)
        monkeypatch.setattr(cm, "ONE_PASS_MAX_ENTRIES", 0)
    g = torch.Generator().manual_seed(61)
    f = torch.randn(101, 33, generator=g)
    mu = torch.randn(9, 33, generator=g)
    assign = torch.randint(0, 9, (101,), generator=g)
    a, b = f.clone().requires_grad_(True), mu.clone().requires_grad_(True)
    got = clustr_fast.cluster_variance(a, b, assign)
    ga, gb = torch.autograd.grad(got * 1.7, (a, b))
    a64, b64 = f.double().requires_grad_(True), mu.double().requires_grad_(True)
    want = (a64 - b64[assign]).square().sum() / 100
    wa, wb = torch.autograd.grad(want * 1.7, (a64, b64))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(ga.double(), wa, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb.double(), wb, rtol=1e-5, atol=1e-7)
    (gm_only,) = torch.autograd.grad(clustr_fast.cluster_variance(f, b, assign), (b,))  # feats without grad
    torch.testing.assert_close(gm_only.double(), wb / 1.7, rtol=1e-5, atol=1e-7)
    assert torch.autograd.gradcheck(lambda x, c: clustr_fast.cluster_variance(x, c, assign[:20]),
                                    (a64[:20].detach().requires_grad_(True), b64.detach().requires_grad_(True)))


@pytest.mark.parametrize("valid", [False, True])
def test_triton_backward_row_blocks_match_float64(backend, valid, monkeypatch):
    """The Triton global backward forms P in row blocks of at most P_BLOCK_ELEMS entries: here
    7 rows (the last block short), against the reference backend's op in float64, with and
    without a valid mask."""
    name, dev = backend
    if name != "triton":
        pytest.skip("Triton launcher switch")
    from clustr_fast.kernels import magnet_loss as K
    feats, centers, assign, classes = _global_inputs(45, 12, 9, torch.float32, dev, seed=62, spread=2.0)
    monkeypatch.setattr(K, "P_BLOCK_ELEMS", 7 * 12)
    ok = (torch.arange(12) != 5) if valid else None  # center 5: no impostor of anyone
    g = torch.randn(45, generator=torch.Generator().manual_seed(63), dtype=torch.float64)
    f, mu = _leaf(feats), _leaf(centers)
    loss, _ = magnet_loss_fwd_op(f, mu, assign, classes, None if ok is None else ok.to(dev),
                                 torch.tensor(20.0, device=dev), 1.0, 1e-8)
    gf, gm = torch.autograd.grad(loss, (f, mu), g.to(dev, loss.dtype))
    f64, mu64 = _f64(feats), _f64(centers)
    with clustr_fast.use_backend("reference"):  # the backward too: it runs at autograd.grad
        ref, _ = magnet_loss_fwd_op(f64, mu64, assign.cpu(), classes.cpu(), ok,
                                    torch.tensor(20.0, dtype=torch.float64), 1.0, 1e-8)
        wf, wm = torch.autograd.grad(ref, (f64, mu64), g)
    assert (ref > 0).float().mean() > 0.25
    assert_close_f64(loss.detach().cpu(), ref.detach(), dtype=torch.float32)
    assert_close_f64(gf.cpu(), wf, dtype=torch.float32, scale=wf.abs().max().clamp_min(1.0))
    assert_close_f64(gm.cpu(), wm, dtype=torch.float32, scale=wm.abs().max().clamp_min(1.0))


def test_torch_compile_fullgraph_cpu():
    feats, ids, classes = _batch_inputs(4, 5, 6, torch.float32, "cpu", seed=22)
    centers = torch.randn(4, 6, generator=torch.Generator().manual_seed(23))

    @torch.compile(fullgraph=True, backend="eager")
    def f(x, c):
        return (clustr_fast.magnet_loss_batch(x, ids, classes, alpha=1.0)
                + clustr_fast.magnet_loss(x, c, ids, classes, alpha=1.0))

    want = (clustr_fast.magnet_loss_batch(feats, ids, classes, alpha=1.0)
            + clustr_fast.magnet_loss(feats, centers, ids, classes, alpha=1.0))
    assert torch.allclose(f(feats, centers), want)


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_backends_large(name, dtype):
    """ClusTR-sized shapes on the GPU backends (several center tiles and backward blocks)."""
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} backend not available")
    with clustr_fast.use_backend(name):
        if dtype == torch.float32:
            _check_global("cuda", dtype, 3000, 200, 512, alpha=1.0, seed=23, spread=3.0, rtol=2e-5)
            _check_batch("cuda", dtype, 12, 20, 512, alpha=12.5, seed=24, rtol=2e-5)
        else:
            feats, centers, assign, classes = _global_inputs(2000, 130, 96, dtype, "cuda", seed=25)
            out = clustr_fast.magnet_loss(feats, centers, assign, classes, reduction="none")
            ref = reference.magnet_loss(feats.double().cpu(), centers.double().cpu(), assign.cpu(),
                                        classes.cpu(), reduction="none")
            plain = _plain_magnet(feats.cpu().float().to(dtype), centers.cpu().to(dtype), assign.cpu(),
                                  classes.cpu(), alpha=1.0)
            assert_close_f64(out.cpu(), ref, dtype=dtype, plain=plain)
