"""magnet_loss(feats, centers) with its defaults, on every backend that runs here, against float64.

assign=None: every row goes to its nearest center (a_i = argmin_k ||f_i - mu_k||^2, no gradient
through the choice); center_classes=None: every center is its own class, so the impostors of row i
are all the other centers.
"""
import pytest
import torch

import clustr_fast
from clustr_fast import reference
from clustr_fast.nn import MagnetLoss

from conftest import assert_close_f64


def _inputs(n, c, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 2.0
    own = torch.randint(0, c, (n,), generator=g)
    feats = centers[own] + 0.3 * torch.randn(n, d, generator=g)
    classes = torch.arange(c) // 2
    return feats.to(device=device, dtype=dtype), centers.to(device=device, dtype=dtype), classes.to(device)


def _nearest64(feats, centers):
    f, c = feats.detach().double().cpu(), centers.detach().double().cpu()
    return ((f[:, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1)


def _close(got, want, dtype):
    """float32: 1e-5 of the largest entry (the float64 reference's)."""
    assert_close_f64(got.cpu(), want, dtype=dtype, scale=want.detach().abs().max().clamp_min(1.0))


def _check(dev, dtype, feats, centers, assign, classes, kw, seed):
    """clustr_fast.magnet_loss with the given Nones against the float64 reference with them filled in."""
    f = feats.detach().clone().requires_grad_(True)
    mu = centers.detach().clone().requires_grad_(True)
    out = clustr_fast.magnet_loss(f, mu, assign, classes, **kw)
    f64 = feats.detach().cpu().double().requires_grad_(True)
    mu64 = centers.detach().cpu().double().requires_grad_(True)
    a = _nearest64(feats, centers) if assign is None else assign.cpu()
    cls = torch.arange(centers.shape[0]) if classes is None else classes.cpu()
    ref = reference.magnet_loss(f64, mu64, a, cls, **kw)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _close(out, ref, dtype)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out.backward(g.to(device=dev, dtype=out.dtype))
    ref.backward(g)
    _close(f.grad, f64.grad, dtype)
    _close(mu.grad, mu64.grad, dtype)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,c,d", [(7, 3, 3), (127, 65, 130), (1000, 3, 1)])
@pytest.mark.parametrize("which", ["assign", "classes", "both"])
def test_defaults_match_the_float64_reference(backend, which, n, c, d, dtype):
    _, dev = backend
    feats, centers, classes = _inputs(n, c, d, dtype, dev, seed=n + c + d)
    assign = None if which in ("assign", "both") else clustr_fast.kmeans_assign(feats, centers)[0]
    cls = None if which in ("classes", "both") else classes
    for kw in (dict(reduction="none"), dict(reduction="sum", alpha=2.5, variance=0.7)):  # sigma^2 computed / given
        _check(dev, dtype, feats, centers, assign, cls, kw, seed=n)


def test_defaults_are_the_nearest_center_and_one_class_per_center(backend):
    _, dev = backend
    feats, centers, _ = _inputs(200, 6, 5, torch.float32, dev, seed=3)
    labels = clustr_fast.kmeans_assign(feats, centers)[0]
    short = clustr_fast.magnet_loss(feats, centers, reduction="none")
    full = clustr_fast.magnet_loss(feats, centers, labels, torch.arange(6, device=dev), reduction="none")
    assert torch.equal(short, full)


def test_no_gradient_through_the_choice():
    """The choice is made on detached values: the gradient is that of the loss with those ids."""
    feats, centers, _ = _inputs(40, 5, 4, torch.float64, "cpu", seed=4)
    f = feats.clone().requires_grad_(True)
    mu = centers.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: clustr_fast.magnet_loss(a, b, reduction="sum"), (f, mu))


def test_module_takes_the_short_calls():
    feats, centers, classes = _inputs(50, 6, 4, torch.float64, "cpu", seed=5)
    labels = clustr_fast.kmeans_assign(feats, centers)[0]
    loss = MagnetLoss(alpha=1.5)
    want = clustr_fast.magnet_loss(feats, centers, alpha=1.5)
    assert torch.equal(loss(feats, centers=centers), want)
    assert torch.equal(loss(feats, labels, centers=centers), want)
    assert torch.equal(loss(feats, cluster_classes=classes, centers=centers),
                       clustr_fast.magnet_loss(feats, centers, labels, classes, alpha=1.5))
    with pytest.raises(TypeError, match="cluster_ids"):
        loss(feats)
    with pytest.raises(TypeError, match="cluster_classes"):
        loss(feats, labels)


def test_bad_inputs_still_name_the_argument():
    feats, centers, _ = _inputs(10, 3, 4, torch.float32, "cpu")
    with pytest.raises(ValueError, match="centers"):
        clustr_fast.magnet_loss(feats, centers[:, :3])
    with pytest.raises(ValueError, match="center_classes"):
        clustr_fast.magnet_loss(feats, centers, center_classes=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="assign"):
        clustr_fast.magnet_loss(feats, centers, torch.zeros(9, dtype=torch.long))
