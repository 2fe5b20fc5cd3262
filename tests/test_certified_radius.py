"""certified_radius on every backend that runs here: float64 values, soundness and tightness."""
import math

import numpy as np
import pytest
import torch

import clustr_fast
from clustr_fast import reference as R
from clustr_fast.ops.certified_radius import certified_radius_op

from conftest import assert_close_f64, low_precision_dtypes

F64 = torch.float64
SHAPES = [(1, 1, 1), (7, 3, 3), (127, 65, 130), (1000, 3, 1), (40, 65, 3)]


def _inputs(n, c, d, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    mu = (1.5 * torch.randn(c, d, generator=g)).to(device=device, dtype=dtype)
    cls = (torch.arange(c) // k).to(device)
    return f, mu, cls


def oracle(f, mu, cls, lip, mode):
    return R.certified_radius(f.cpu().double(), mu.cpu().double(), cls.cpu(), lip, mode=mode)


def _scale(f, mu, lip):
    """Radii inherit the float32 error of d_j - d_1, relative to ||f||^2 + ||mu||^2 over the gaps."""
    f, mu = f.cpu().double(), mu.cpu().double()
    gap = torch.cdist(mu, mu)
    gmin = gap[gap > 0].min() if (gap > 0).any() else torch.tensor(1.0, dtype=F64)
    return ((f.square().sum(1) + mu.square().sum(1).max()) / (2 * lip * gmin)).clamp_min(1.0)


@pytest.mark.parametrize("n,c,d", SHAPES)
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64(backend, n, c, d, k, dtype):
    _, dev = backend
    f, mu, cls = _inputs(n, c, d, k, dtype, dev, seed=n + c + d + k)
    lip = 1.7
    for mode in ("sound", "paper"):
        r = clustr_fast.certified_radius(f, mu, cls, lip, mode=mode)
        assert r.dtype == dtype and r.shape == (n,) and r.device.type == dev.type
        ref = oracle(f, mu, cls, lip, mode)
        assert torch.equal(torch.isinf(r.cpu()), torch.isinf(ref))
        fin = torch.isfinite(ref)
        assert_close_f64(r.cpu()[fin], ref[fin], dtype=dtype, scale=_scale(f, mu, lip)[fin])
        if c > 1 and k == 1:
            assert fin.all() and (ref > 0).all()


def test_low_precision_inputs(backend):
    name, dev = backend
    for dtype in low_precision_dtypes(name, dev):
        f, mu, cls = _inputs(60, 12, 9, 2, dtype, dev, seed=3)
        r = clustr_fast.certified_radius(f, mu, cls, 1.0)
        assert r.dtype == torch.float32
        ref = oracle(f, mu, cls, 1.0, "sound")
        plain = R.certified_radius(f.cpu(), mu.cpu(), cls.cpu(), 1.0)  # float32 arithmetic on the same inputs
        scale = _scale(f, mu, 1.0)
        assert_close_f64(r.cpu(), ref, dtype=torch.float32, scale=scale)
        assert ((r.cpu().double() - ref).abs() / scale).max() <= 2 * ((plain.double() - ref).abs() / scale).max() + 1e-5


def _nearest_class(points, mu, cls):
    d = ((points[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
    return cls[d.argmin(1)]


@pytest.mark.parametrize("k", [1, 2])
def test_sound_and_tight_in_2d(backend, k):
    """No perturbation shorter than r changes the nearest-center class; 0.1% past r along the
    binding bisector's normal crosses that bisector (and flips the class when K=1)."""
    _, dev = backend
    rng = np.random.default_rng(20 + k)
    mu = rng.normal(size=(3 * k, 2)) * 3
    cls = np.repeat(np.arange(3), k)
    pts = rng.normal(size=(60, 2)) * 3
    r = clustr_fast.certified_radius(torch.tensor(pts, device=dev), torch.tensor(mu, device=dev),
                                     torch.tensor(cls, device=dev), 1.0).cpu().numpy()
    assert np.isfinite(r).all() and (r > 0).all()
    ang = rng.uniform(0, 2 * np.pi, 500)
    dirs = np.stack([np.cos(ang), np.sin(ang)], 1)
    for i, p in enumerate(pts):
        c0 = _nearest_class(p[None], mu, cls)[0]
        lengths = r[i] * rng.uniform(0, 0.999, 500)
        lengths[:100] = r[i] * 0.999
        assert (_nearest_class(p[None] + lengths[:, None] * dirs, mu, cls) == c0).all(), i
        d = ((p[None] - mu) ** 2).sum(1)
        i1 = d.argmin()
        others = [j for j in range(len(mu)) if cls[j] != cls[i1]]
        best = min(others, key=lambda j: (d[j] - d[i1]) / (2 * np.linalg.norm(mu[j] - mu[i1])))
        u = (mu[best] - mu[i1]) / np.linalg.norm(mu[best] - mu[i1])
        y = p + 1.001 * r[i] * u
        dy = ((y[None] - mu) ** 2).sum(1)
        assert dy[best] < dy[i1]  # the binding bisector is crossed
        if k == 1:
            assert _nearest_class(y[None], mu, cls)[0] != c0


def test_paper_mode_overstates(backend):
    _, dev = backend
    f = torch.tensor([[1.0, 0.0]], dtype=F64, device=dev)
    mu = torch.tensor([[0.0, 0.0], [-3.0, 0.0], [2.0, 5.0]], dtype=F64, device=dev)
    cls = torch.tensor([0, 1, 2], device=dev)
    sound = clustr_fast.certified_radius(f, mu, cls, 1.0).item()
    paper = clustr_fast.certified_radius(f, mu, cls, 1.0, mode="paper").item()
    assert math.isclose(paper, 2.5, rel_tol=1e-12)
    assert math.isclose(sound, 25 / (2 * math.sqrt(29)), rel_tol=1e-12)
    # a perturbation between the two radii changes the class: the paper radius is not certified
    y = np.array([1.0, 0.0]) + 0.5 * (sound + paper) * np.array([2.0, 5.0]) / math.sqrt(29)
    assert _nearest_class(y[None], mu.cpu().numpy(), cls.cpu().numpy())[0] == 2
    assert math.isclose(clustr_fast.certified_radius(f, mu, cls, torch.tensor(4.0)).item(), sound / 4,
                        rel_tol=1e-12)


@pytest.mark.parametrize("a_first", [True, False])
def test_paper_mode_ties_go_to_lower_index(backend, a_first):
    """Two other-class centers at the same distance, 100 columns apart (different tiles on every
    backend), with different bisector gaps: the paper radius is that of the lower index."""
    _, dev = backend
    f = torch.tensor([[0.0, 0.0]], dtype=F64, device=dev)
    far = torch.stack([100.0 + torch.arange(100, dtype=F64), torch.full((100,), 100.0, dtype=F64)], 1)
    a, b = torch.tensor([[2.0, 0.0]], dtype=F64), torch.tensor([[-2.0, 0.0]], dtype=F64)
    first, last = (a, b) if a_first else (b, a)
    mu = torch.cat([torch.tensor([[0.5, 0.0]], dtype=F64), first, far, last]).to(dev)
    cls = torch.cat([torch.tensor([0, 1]), torch.arange(100) % 3 + 1, torch.tensor([2])]).to(dev)
    # (d_j - d_1) / (2 L gap): a = (4 - 0.25) / (2 * 1.5) = 1.25, b = 3.75 / (2 * 2.5) = 0.75
    paper = clustr_fast.certified_radius(f, mu, cls, 1.0, mode="paper").item()
    assert paper == (1.25 if a_first else 0.75)
    assert clustr_fast.certified_radius(f, mu, cls, 1.0).item() == 0.75


def test_nearest_center_ties_across_tiles_go_to_lower_index(backend):
    """Two same-class centers at the same distance, 99 columns apart: mu_1 is the lower index,
    and the radius is measured from it (from the other copy it would differ)."""
    _, dev = backend
    f = torch.tensor([[0.0, 0.0]], dtype=F64, device=dev)
    far = torch.stack([100.0 + torch.arange(97, dtype=F64), torch.full((97,), 100.0, dtype=F64)], 1)
    mu = torch.cat([torch.tensor([[50.0, 50.0], [1.0, 0.0], [3.0, 0.0]], dtype=F64), far,
                    torch.tensor([[-1.0, 0.0]], dtype=F64)]).to(dev)
    cls = torch.cat([torch.tensor([2, 0, 1]), torch.arange(97) % 2 + 1, torch.tensor([0])]).to(dev)
    # from mu_1 = (1, 0): (9 - 1) / (2 * 2) = 2 for the class-1 center (3, 0); from (-1, 0) it would be 1
    for mode in ("sound", "paper"):
        assert clustr_fast.certified_radius(f, mu, cls, 1.0, mode=mode).item() == 2.0


def test_edge_cases(backend):
    _, dev = backend
    g = torch.Generator().manual_seed(9)
    f = torch.randn(30, 3, generator=g, dtype=F64).to(dev)
    mu = torch.randn(4, 3, generator=g, dtype=F64).to(dev)
    one = torch.zeros(4, dtype=torch.long, device=dev)
    for mode in ("sound", "paper"):
        assert torch.isinf(clustr_fast.certified_radius(f, mu, one, 1.0, mode=mode)).all()
    dup = torch.cat([mu, mu[:1]])  # a copy of center 0 with another class
    cls = torch.tensor([0, 0, 0, 0, 1], device=dev)
    near0 = ((f[:, None] - mu[None]) ** 2).sum(-1).argmin(1) == 0
    assert near0.any()
    for mode in ("sound", "paper"):
        r = clustr_fast.certified_radius(f, dup, cls, 1.0, mode=mode)
        assert (r[near0] == 0).all() and (r[~near0] > 0).all()
    # exact ties for the nearest center go to the lower index
    ft = torch.tensor([[0.0, 0.0]], device=dev)
    mt = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]], device=dev)
    ct = torch.tensor([0, 1, 2], device=dev)
    assert clustr_fast.certified_radius(ft, mt, ct, 1.0).item() == 0.0  # mu_1 = center 0, center 1 ties
    r2 = clustr_fast.certified_radius(ft, mt, torch.tensor([0, 0, 2], device=dev), 1.0).item()
    assert math.isclose(r2, 8 / (2 * math.sqrt(10)), rel_tol=1e-6)  # mu_1 = center 0 -> center 2


def test_non_contiguous_inputs(backend):
    _, dev = backend
    g = torch.Generator().manual_seed(5)
    f = torch.randn(40, 12, generator=g).to(dev)[::2, ::3]
    mu = torch.randn(12, 16, generator=g).to(dev).t()[::2, ::3]
    cls = (torch.arange(16, device=dev) % 3)[::2]
    r = clustr_fast.certified_radius(f, mu, cls, 2.0)
    ref = oracle(f, mu, cls, 2.0, "sound")
    assert_close_f64(r.cpu(), ref, dtype=torch.float32, scale=_scale(f, mu, 2.0))


def test_bad_inputs_name_the_argument():
    f, mu, cls = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="lipschitz"):
        clustr_fast.certified_radius(f, mu, cls, 0.0)
    with pytest.raises(ValueError, match="lipschitz"):
        clustr_fast.certified_radius(f, mu, cls, torch.tensor(-1.0))
    with pytest.raises(ValueError, match="mode"):
        clustr_fast.certified_radius(f, mu, cls, 1.0, mode="tight")
    with pytest.raises(ValueError, match="center_classes"):
        clustr_fast.certified_radius(f, mu, cls[:3], 1.0)
    with pytest.raises(TypeError, match="center_classes"):
        clustr_fast.certified_radius(f, mu, cls.float(), 1.0)
    with pytest.raises(ValueError, match="centers"):
        clustr_fast.certified_radius(f, torch.randn(5, 2), cls, 1.0)
    with pytest.raises(TypeError, match="centers"):
        clustr_fast.certified_radius(f, mu.double(), cls, 1.0)
    with pytest.raises(ValueError, match="centers"):
        clustr_fast.certified_radius(f, torch.randn(0, 3), cls[:0], 1.0)


def test_opcheck():
    f, mu, cls = _inputs(9, 6, 5, 2, torch.float32, "cpu", seed=51)
    for mode in (0, 1):
        torch.library.opcheck(certified_radius_op, (f, mu, cls, 1.5, mode))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_gpu_many_centers_match_float64(name):
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} backend not built")
    f, mu, cls = _inputs(2000, 300, 64, 3, torch.float32, "cuda", seed=7)
    with clustr_fast.use_backend(name):
        for mode in ("sound", "paper"):
            r = clustr_fast.certified_radius(f, mu, cls, 1.3, mode=mode)
            ref = oracle(f, mu, cls, 1.3, mode)
            assert_close_f64(r.cpu(), ref, dtype=torch.float32, scale=_scale(f, mu, 1.3))
