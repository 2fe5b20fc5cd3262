"""The Triton launchers' GPU branches (launch configurations, precision forms, block sizes),
run on the CPU under the interpreter against the float64 reference.

Without a GPU the launchers take their interpreter branch (small blocks, IEEE products), so the
branches a GPU takes (module-level configuration dicts, ``split_launch``, the 3xTF32 product
form) would otherwise first run on a GPU. Here ``triton_interpreted()`` is patched to False in
every kernel module while Triton still interprets, so those branches run on small inputs. It checks the Python side of the launch, not GPU code generation (tools/sass_stats.py
compiles the kernels for sm_90a; the GPU tests run them).
"""
import importlib

import pytest
import torch

import clustr_fast
from clustr_fast import reference as R

from conftest import assert_close_f64

_MODULES = ("_common", "certified_radius", "kmeans", "magnet_loss", "magnet_loss_batch", "pairwise_sqdist",
            "soft_cluster_logits")

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or "triton" not in clustr_fast.backends(),
                                reason="runs the GPU launch branches under the CPU interpreter")


@pytest.fixture
def gpu_branches(monkeypatch):
    """Every kernel module takes its GPU launch branch; ops run on the Triton backend."""
    asked = []

    def not_interpreted():
        asked.append(1)
        return False

    for name in _MODULES:
        mod = importlib.import_module(f"clustr_fast.kernels.{name}")
        monkeypatch.setattr(mod, "triton_interpreted", not_interpreted)
    with clustr_fast.use_backend("triton"):
        yield
    assert asked, "no launcher asked for its branch: the test ran no Triton launcher"


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _leaf(t):
    return t.clone().requires_grad_(True)


def _grads_close(out, ref, inputs, inputs64, seed):
    g = _randn(*out.shape, seed=seed) if out.dim() else torch.tensor(1.3)
    fin = torch.isfinite(ref.detach())
    assert torch.equal(torch.isfinite(out.detach()), fin)
    assert_close_f64(out.detach()[fin], ref.detach()[fin], dtype=torch.float32)
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(ref, inputs64, g.double())
    for a, b in zip(got, want):
        assert_close_f64(a, b, dtype=torch.float32, scale=b.abs().max().clamp_min(1.0))


def test_pairwise_sqdist(gpu_branches):
    x, c = _randn(70, 40, seed=0), _randn(13, 40, seed=1)
    xl, cl, x64, c64 = _leaf(x), _leaf(c), _leaf(x.double()), _leaf(c.double())
    _grads_close(clustr_fast.pairwise_sqdist(xl, cl), R.pairwise_sqdist(x64, c64), (xl, cl), (x64, c64), seed=2)


@pytest.mark.parametrize("top_d", [3, 13])
def test_soft_cluster_logits(gpu_branches, top_d):
    f, mu = _randn(70, 40, seed=3), 1.5 * _randn(13, 40, seed=4)
    cls = torch.arange(13) % 5
    fl, ml, f64, m64 = _leaf(f), _leaf(mu), _leaf(f.double()), _leaf(mu.double())
    out = clustr_fast.soft_cluster_logits(fl, ml, cls, 6, variance=20.0, top_d=top_d)
    ref = R.soft_cluster_logits(f64, m64, cls, 6, variance=20.0, top_d=top_d)
    _grads_close(out, ref, (fl, ml), (f64, m64), seed=5)


def test_certified_radius(gpu_branches):
    f, mu = _randn(70, 40, seed=6), _randn(13, 40, seed=7)
    cls = torch.arange(13) % 5
    got = clustr_fast.certified_radius(f, mu, cls, 2.0)
    want = R.certified_radius(f.double(), mu.double(), cls, 2.0)
    assert_close_f64(got, want, dtype=torch.float32)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_magnet_loss(gpu_branches, reduction):
    f, mu = _randn(70, 40, seed=8), 1.2 * _randn(13, 40, seed=9)
    assign, cls = torch.arange(70) % 13, torch.arange(13) // 2
    fl, ml, f64, m64 = _leaf(f), _leaf(mu), _leaf(f.double()), _leaf(mu.double())
    out = clustr_fast.magnet_loss(fl, ml, assign, cls, alpha=2.0, reduction=reduction)
    ref = R.magnet_loss(f64, m64, assign, cls, alpha=2.0, reduction=reduction)
    _grads_close(out, ref, (fl, ml), (f64, m64), seed=10)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_magnet_loss_batch(gpu_branches, reduction):
    f = _randn(70, 40, seed=11)
    ids, cls = torch.arange(70) % 6, torch.arange(6) // 2
    fl, f64 = _leaf(f), _leaf(f.double())
    out = clustr_fast.magnet_loss_batch(fl, ids, cls, alpha=5.0, reduction=reduction)
    ref = R.magnet_loss_batch(f64, ids, cls, alpha=5.0, reduction=reduction)
    _grads_close(out, ref, (fl,), (f64,), seed=12)


def test_kmeans_assign_update_plusplus(gpu_branches):
    x, c = _randn(300, 24, seed=13), _randn(9, 24, seed=14)
    labels, sq = clustr_fast.kmeans_assign(x, c)
    d = R.pairwise_sqdist(x.double(), c.double())
    assert torch.equal(labels, d.argmin(1))
    assert_close_f64(sq, d.min(1).values, dtype=torch.float32)
    centers, counts = clustr_fast.kmeans_update(x, labels, 9)
    want = torch.zeros(9, 24, dtype=torch.float64).index_add_(0, labels, x.double())
    assert torch.equal(counts.long(), torch.bincount(labels, minlength=9))
    assert_close_f64(centers, want / counts.double().clamp_min(1)[:, None], dtype=torch.float32)
    seeds, idx = clustr_fast.kmeans_plusplus(x, 9, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (9,) and idx.unique().numel() == 9 and torch.equal(seeds, x[idx])
    with clustr_fast.use_backend("reference"):  # same generator, same draws: the same greedy choices
        _, want_idx = clustr_fast.kmeans_plusplus(x, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, want_idx)


def test_kmeans_fit_and_per_group(gpu_branches):
    """The Lloyd loop (assign + update launches) and the grouped refresh: the same result as the
    reference backend from the same seed."""
    x = _randn(300, 24, seed=15)
    groups = torch.arange(300) % 3
    km = clustr_fast.KMeans(5, max_iter=6, random_state=0).fit(x)
    labels, centers = clustr_fast.kmeans_per_group(x, groups, 2, max_iter=6, generator=torch.Generator().manual_seed(1))
    with clustr_fast.use_backend("reference"):
        want = clustr_fast.KMeans(5, max_iter=6, random_state=0).fit(x)
        want_labels, want_centers = clustr_fast.kmeans_per_group(x, groups, 2, max_iter=6,
                                                                 generator=torch.Generator().manual_seed(1))
    assert torch.equal(km.labels_, want.labels_)
    assert_close_f64(km.cluster_centers_, want.cluster_centers_.double(), dtype=torch.float32)
    assert torch.equal(labels, want_labels)
    assert_close_f64(centers, want_centers.double(), dtype=torch.float32)
