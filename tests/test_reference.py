"""The plain-PyTorch references against independent float64 brute force (numpy loops)."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from clustr_fast import reference as R

F64 = torch.float64


def t64(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def np_sqdist(x, c):
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def np_lse(v):
    v = np.asarray(v, np.float64)
    if v.size == 0:
        return -np.inf
    m = v.max()
    return m + math.log(np.exp(v - m).sum())


def np_variance(f, mu, assign):
    return sum(((f[i] - mu[assign[i]]) ** 2).sum() for i in range(len(f))) / (len(f) - 1)


def np_magnet(f, mu, assign, cls, alpha, var, eps, valid=None):
    """The ClusTR formula with its two epsilons, per row, in plain float64."""
    f, mu = np.asarray(f, np.float64), np.asarray(mu, np.float64)
    if var is None:
        var = np_variance(f, mu, assign)
    s = 1.0 / (2.0 * var)
    out = []
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for i in range(len(f)):
            own = ((f[i] - mu[assign[i]]) ** 2).sum()
            imp = 0.0
            for j in range(len(mu)):
                if cls[j] != cls[assign[i]] and (valid is None or valid[j]):
                    imp += math.exp(-s * ((f[i] - mu[j]) ** 2).sum())
            v = -np.log(np.float64(math.exp(-s * own - alpha)) / np.float64(imp + eps) + eps)
            out.append(max(0.0, v) if np.isfinite(v) or v > 0 else 0.0)
    return np.array(out)


def reduce_np(v, reduction):
    return {"mean": v.mean(), "sum": v.sum(), "none": v}[reduction]


def make_clusters(seed, n, d, n_classes, k, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    c = n_classes * k
    feats = torch.randn(n, d, generator=g, dtype=F64)
    centers = scale * torch.randn(c, d, generator=g, dtype=F64)
    assign = torch.randint(0, c, (n,), generator=g)
    classes = torch.arange(n_classes).repeat_interleave(k)
    return feats, centers, assign, classes


# ------------------------------------------------------------------ distances, means


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (7, 3, 3), (127, 65, 130)])
def test_pairwise_sqdist(n, k, d):
    g = torch.Generator().manual_seed(n + k + d)
    x = torch.randn(n, d, generator=g, dtype=F64)
    c = torch.randn(k, d, generator=g, dtype=F64)
    out = R.pairwise_sqdist(x, c)
    assert out.dtype == F64 and out.shape == (n, k)
    np.testing.assert_allclose(out.numpy(), np_sqdist(x, c), rtol=1e-10, atol=1e-10)
    out32 = R.pairwise_sqdist(x.float().t().contiguous().t(), c.float())   # non-contiguous ok
    np.testing.assert_allclose(out32.numpy(), np_sqdist(x, c), rtol=1e-4, atol=1e-4)


def test_pairwise_sqdist_half_returns_float32_and_grads_in_input_dtype():
    x = torch.randn(5, 4, dtype=torch.float16, requires_grad=True)
    c = torch.randn(3, 4, dtype=torch.bfloat16).to(torch.float16)
    out = R.pairwise_sqdist(x, c)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.dtype == torch.float16
    assert torch.autograd.gradcheck(
        lambda a, b: R.pairwise_sqdist(a, b), (torch.randn(4, 3, dtype=F64, requires_grad=True),
                                               torch.randn(2, 3, dtype=F64, requires_grad=True) + 3))


def test_cluster_means_and_variance():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(127, 3, generator=g, dtype=F64)
    ids = torch.randint(0, 6, (127,), generator=g)
    ids[ids == 4] = 5                                   # cluster 4 empty
    means, counts = R.cluster_means(f, ids, 7)
    for m in range(7):
        rows = [f[i].numpy() for i in range(127) if ids[i] == m]
        assert counts[m] == len(rows)
        want = np.mean(rows, 0) if rows else np.zeros(3)
        np.testing.assert_allclose(means[m].numpy(), want, rtol=1e-12, atol=1e-12)
    assert counts.dtype == torch.int64
    var = R.cluster_variance(f, means, ids)
    assert var.dim() == 0
    np.testing.assert_allclose(var.item(), np_variance(f.numpy(), means.numpy(), ids.numpy()), rtol=1e-12)
    fr = f[:9].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: R.cluster_means(x, ids[:9], 7)[0], (fr,))


# ------------------------------------------------------------------ magnet loss


@pytest.mark.parametrize("alpha", [0.0, 1.0, 12.5])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("given_var", [False, True])
def test_magnet_loss_matches_formula(alpha, eps, k, given_var):
    for n, d in [(7, 3), (127, 130), (2, 1)]:
        f, mu, assign, cls = make_clusters(n * 10 + d + k, n, d, 3, k)
        var = 0.7 * d if given_var else None
        want = np_magnet(f.numpy(), mu.numpy(), assign.numpy(), cls.numpy(), alpha, var, eps)
        for reduction in ("mean", "sum", "none"):
            out = R.magnet_loss(f, mu, assign, cls, alpha=alpha, variance=var, eps=eps, reduction=reduction)
            assert out.dtype == F64
            np.testing.assert_allclose(out.numpy(), reduce_np(want, reduction), rtol=1e-9, atol=1e-12)
    assert want.max() > 0                                   # not trivially zero


def test_magnet_loss_single_row_with_given_variance():
    f, mu, assign, cls = make_clusters(3, 1, 3, 3, 1)
    out = R.magnet_loss(f, mu, assign, cls, variance=torch.tensor(2.0, dtype=F64), reduction="none")
    want = np_magnet(f.numpy(), mu.numpy(), assign.numpy(), cls.numpy(), 1.0, 2.0, 1e-8)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_magnet_loss_gradcheck_through_variance(eps):
    f, mu, assign, cls = make_clusters(5, 7, 3, 3, 2)
    f.requires_grad_()
    mu.requires_grad_()
    fn = lambda a, b: R.magnet_loss(a, b, assign, cls, alpha=0.5, eps=eps, reduction="none")
    assert torch.autograd.gradcheck(fn, (f, mu))
    # a given variance is a constant
    v = torch.tensor(3.0, dtype=F64, requires_grad=True)
    R.magnet_loss(f, mu, assign, cls, variance=v).backward()
    assert v.grad is None


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_magnet_loss_huge_distances(dtype):
    # feats and centers ~100 apart with sigma^2 = 1: -s*d ~ -1e4, exp underflows in float64.
    f, mu, assign, cls = make_clusters(11, 31, 3, 3, 2, scale=1.0)
    f, mu = (100 * f).to(dtype).requires_grad_(), (100 * mu).to(dtype).requires_grad_()
    fn, mun = f.detach().double().numpy(), mu.detach().double().numpy()
    # eps = 0: the analytic limit relu(s*own + alpha + logsumexp_imp(-s d)), by hand
    s, alpha = 0.5, 12.5
    d = np_sqdist(fn, mun)
    want0 = np.array([
        max(0.0, s * d[i, assign[i]] + alpha + np_lse([-s * d[i, j] for j in range(len(mun))
                                                        if cls[j] != cls[assign[i]]]))
        for i in range(len(fn))])
    assert want0.max() > 100 and (want0 == 0).any()
    want8 = np_magnet(fn, mun, assign.numpy(), cls.numpy(), alpha, 1.0, 1e-8)
    for eps, want in [(0.0, want0), (1e-8, want8)]:
        f.grad = mu.grad = None
        out = R.magnet_loss(f, mu, assign, cls, alpha=alpha, variance=1.0, eps=eps, reduction="none")
        assert torch.isfinite(out).all()
        np.testing.assert_allclose(out.detach().double().numpy(), want, rtol=1e-5 if dtype == F64 else 1e-3,
                                   atol=1e-6 if dtype == F64 else 0.5)
        out.sum().backward()
        assert torch.isfinite(f.grad).all() and torch.isfinite(mu.grad).all()
        if eps == 0:
            assert f.grad.abs().sum() > 0                   # eps > 0 saturates at -log(eps) here


@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_magnet_loss_no_impostor(eps):
    f, mu, assign, _ = make_clusters(2, 7, 3, 1, 3)
    cls = torch.zeros(3, dtype=torch.int64)                 # every center of one class
    f.requires_grad_()
    out = R.magnet_loss(f, mu, assign, cls, alpha=20.0, eps=eps, reduction="none")
    want = np_magnet(f.detach().numpy(), mu.numpy(), assign.numpy(), cls.numpy(), 20.0, None, eps)
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-10)
    if eps == 0:
        assert (out == 0).all()
    else:
        assert (out > 0).all()                              # relu(-log(exp(A)/eps + eps)), A < log eps
    out.sum().backward()
    assert torch.isfinite(f.grad).all()


def test_magnet_loss_batch_matches_loop_and_skips_empty_clusters():
    g = torch.Generator().manual_seed(4)
    n, d, m = 127, 5, 9
    f = torch.randn(n, d, generator=g, dtype=F64)
    ids = torch.randint(0, m, (n,), generator=g)
    ids[ids == 2] = 3                                       # cluster 2 (class 0) is empty
    ids[ids == 7] = 8                                       # cluster 7 (class 2) is empty
    cls = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    means = np.zeros((m, d))
    valid = np.zeros(m, bool)
    for c in range(m):
        rows = f.numpy()[ids.numpy() == c]
        if len(rows):
            means[c], valid[c] = rows.mean(0), True
    for alpha, eps, var in [(1.0, 1e-8, None), (12.5, 0.0, None), (0.0, 1e-8, 4.0)]:
        want = np_magnet(f.numpy(), means, ids.numpy(), cls.numpy(), alpha, var, eps, valid=valid)
        out = R.magnet_loss_batch(f, ids, cls, alpha=alpha, variance=var, eps=eps, reduction="none")
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-9, atol=1e-12)
        # an empty cluster acting as an impostor at the origin would change the value
        naive = np_magnet(f.numpy(), means, ids.numpy(), cls.numpy(), alpha, var, eps)
        assert not np.allclose(naive, want)


def test_magnet_loss_batch_only_own_class_present():
    f = torch.randn(6, 2, dtype=F64)
    ids = torch.tensor([0, 0, 1, 1, 0, 1])
    cls = torch.tensor([0, 0, 1])                           # the class-1 cluster is empty
    out = R.magnet_loss_batch(f, ids, cls, eps=0.0, reduction="none")
    assert (out == 0).all()


@pytest.mark.parametrize("var", [None, 2.0])
def test_magnet_loss_batch_gradcheck_through_means(var):
    g = torch.Generator().manual_seed(8)
    f = torch.randn(12, 3, generator=g, dtype=F64, requires_grad=True)
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])
    cls = torch.tensor([0, 1, 1, 2])
    fn = lambda x: R.magnet_loss_batch(x, ids, cls, alpha=0.3, variance=var, reduction="none")
    assert torch.autograd.gradcheck(fn, (f,))


def test_magnet_loss_half_inputs():
    f, mu, assign, cls = make_clusters(9, 7, 3, 3, 1)
    fh = f.half().requires_grad_()
    out = R.magnet_loss(fh, mu.half(), assign, cls)
    assert out.dtype == torch.float32
    out.backward()
    assert fh.grad.dtype == torch.float16 and torch.isfinite(fh.grad).all()


# ------------------------------------------------------------------ soft cluster logits


def np_soft_logits(f, mu, cls, n_classes, var, top_d):
    d = np_sqdist(f, mu)
    out = np.full((len(f), n_classes), -np.inf)
    for i in range(len(f)):
        sel = sorted(range(len(mu)), key=lambda j: (d[i, j], j))[: top_d or len(mu)]
        for c in range(n_classes):
            vals = [-d[i, j] / (2 * var) for j in sel if cls[j] == c]
            if vals:
                out[i, c] = np_lse(vals)
        out[i] -= np_lse(out[i][np.isfinite(out[i])])
    return out


@pytest.mark.parametrize("c,n_classes,top_d", [
    (1, 2, 1), (1, 2, None), (3, 3, 1), (3, 3, 3), (3, 3, None), (65, 5, 1), (65, 5, 3), (65, 5, 65),
    (65, 5, None)])
def test_soft_cluster_logits_matches_loop(c, n_classes, top_d):
    for n, d in [(1, 1), (7, 3), (127, 130)]:
        g = torch.Generator().manual_seed(c + n + d)
        f = torch.randn(n, d, generator=g, dtype=F64)
        mu = torch.randn(c, d, generator=g, dtype=F64)
        cls = torch.randint(0, n_classes, (c,), generator=g)
        var = 0.3 * d
        out = R.soft_cluster_logits(f, mu, cls, n_classes, variance=var, top_d=top_d)
        want = np_soft_logits(f.numpy(), mu.numpy(), cls.numpy(), n_classes, var, top_d)
        assert out.shape == (n, n_classes) and out.dtype == F64
        assert np.array_equal(np.isinf(out.numpy()), np.isinf(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(out.numpy()[fin], want[fin], rtol=1e-9, atol=1e-9)
        labels, probs = R.soft_cluster_predict(f, mu, cls, n_classes, variance=var, top_d=top_d)
        np.testing.assert_allclose(probs.numpy(), np.exp(want), atol=1e-12)
        np.testing.assert_array_equal(labels.numpy(), want.argmax(1))


def test_soft_cluster_logits_absent_class_has_zero_gradient():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(9, 4, generator=g, dtype=F64, requires_grad=True)
    mu = torch.randn(12, 4, generator=g, dtype=F64, requires_grad=True)
    cls = torch.arange(12) % 4
    out = R.soft_cluster_logits(f, mu, cls, 6, variance=1.5, top_d=2)
    absent = torch.isinf(out)
    assert absent[:, 4:].all() and absent[:, :4].any()      # classes 4, 5 have no center at all
    gout = torch.randn(out.shape, generator=g, dtype=F64)    # upstream values at -inf entries too
    gf, gm = torch.autograd.grad(out, (f, mu), gout, retain_graph=True)
    assert torch.isfinite(gf).all() and torch.isfinite(gm).all()
    # the -inf entries pass nothing back: their upstream values are ignored
    g_inf = torch.autograd.grad(out, (f, mu), gout.masked_fill(~absent, 0.0), retain_graph=True)
    assert all((t == 0).all() for t in g_inf)
    g_fin = torch.autograd.grad(out, (f, mu), gout.masked_fill(absent, 0.0))
    assert torch.equal(gf, g_fin[0]) and torch.equal(gm, g_fin[1])

    masked = lambda a, b: R.soft_cluster_logits(a, b, cls, 6, variance=1.5, top_d=2).masked_fill(absent, 0.0)
    assert torch.autograd.gradcheck(masked, (f, mu))
    full = lambda a, b: R.soft_cluster_logits(a, b, cls, 4, variance=0.7)
    assert torch.autograd.gradcheck(full, (f, mu))


def test_soft_cluster_logits_ties_go_to_lower_index():
    f = torch.tensor([[0.0, 0.0], [5.0, 5.0]], dtype=F64)
    mu = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 4.0]], dtype=F64)
    # centers 0, 1 and 2 are equidistant from f[0]; center 0 is class 2, 1 is class 0, 2 is class 1
    cls = torch.tensor([2, 0, 1, 0])
    out = R.soft_cluster_logits(f, mu, cls, 3, variance=1.0, top_d=1)
    assert out[0, 2] == 0 and torch.isinf(out[0, :2]).all()
    out2 = R.soft_cluster_logits(f, mu, cls, 3, variance=1.0, top_d=2)
    assert torch.isinf(out2[0, 1]) and torch.isfinite(out2[0, [0, 2]]).all()
    np.testing.assert_allclose(out2[0, [0, 2]].numpy(), [math.log(0.5)] * 2)


def test_soft_cluster_logits_half_and_far_classes():
    # far-apart classes: per-class log-space sums keep every selected class finite
    f = torch.zeros(1, 2, dtype=torch.float16)
    mu = torch.tensor([[1.0, 0.0], [60.0, 0.0]], dtype=torch.float16)
    out = R.soft_cluster_logits(f, mu, torch.tensor([0, 1]), 2, variance=0.5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    np.testing.assert_allclose(out[0, 1].item(), -(3600 - 1), rtol=1e-6)


# ------------------------------------------------------------------ certified radius


def nearest_class(points, mu, cls):
    d = np_sqdist(points, mu)
    return cls[d.argmin(1)]


@pytest.mark.parametrize("k", [1, 2])
def test_certified_radius_is_sound_and_tight_in_2d(k):
    rng = np.random.default_rng(10 + k)
    mu = rng.normal(size=(3 * k, 2)) * 3
    cls = np.repeat(np.arange(3), k)
    pts = rng.normal(size=(40, 2)) * 3
    r = R.certified_radius(t64(pts), t64(mu), torch.as_tensor(cls), 1.0).numpy()
    assert np.isfinite(r).all() and (r > 0).all()
    ang = rng.uniform(0, 2 * np.pi, 400)
    dirs = np.stack([np.cos(ang), np.sin(ang)], 1)
    for i, p in enumerate(pts):
        c0 = nearest_class(p[None], mu, cls)[0]
        lengths = r[i] * rng.uniform(0, 0.999, 400)
        lengths[:50] = r[i] * 0.999
        moved = p[None] + lengths[:, None] * dirs
        assert (nearest_class(moved, mu, cls) == c0).all(), i
        # worst direction: the normal of the binding bisector, towards mu_j
        d = np_sqdist(p[None], mu)[0]
        i1 = d.argmin()
        best = min((j for j in range(len(mu)) if cls[j] != cls[i1]),
                   key=lambda j: (d[j] - d[i1]) / (2 * np.linalg.norm(mu[j] - mu[i1])))
        np.testing.assert_allclose(r[i], (d[best] - d[i1]) / (2 * np.linalg.norm(mu[best] - mu[i1])))
        u = (mu[best] - mu[i1]) / np.linalg.norm(mu[best] - mu[i1])
        y = p + 1.001 * r[i] * u
        dy = np_sqdist(y[None], mu)[0]
        assert dy[best] < dy[i1]                            # the bisector is crossed
        if not any(dy[j] < dy[best] for j in range(len(mu)) if cls[j] == cls[i1]):
            assert nearest_class(y[None], mu, cls)[0] != c0
        if k == 1:
            assert nearest_class(y[None], mu, cls)[0] != c0


def test_certified_radius_paper_mode_overstates():
    f = t64([[1.0, 0.0]])
    mu = t64([[0.0, 0.0], [-3.0, 0.0], [2.0, 5.0]])          # A: nearest other-class; B: farther
    cls = torch.tensor([0, 1, 2])
    sound = R.certified_radius(f, mu, cls, 1.0).item()
    paper = R.certified_radius(f, mu, cls, 1.0, mode="paper").item()
    np.testing.assert_allclose(paper, 2.5)
    np.testing.assert_allclose(sound, 25 / (2 * math.sqrt(29)))
    assert paper > sound
    # a perturbation shorter than the paper radius flips the class
    u = np.array([2.0, 5.0]) / math.sqrt(29)
    y = np.array([1.0, 0.0]) + 0.5 * (sound + paper) * u
    assert nearest_class(y[None], mu.numpy(), cls.numpy())[0] == 2
    # the Lipschitz constant divides the radius
    np.testing.assert_allclose(R.certified_radius(f, mu, cls, torch.tensor(4.0)).item(), sound / 4)


def test_certified_radius_edge_cases():
    f = torch.randn(5, 3, dtype=F64)
    mu = torch.randn(4, 3, dtype=F64)
    assert torch.isinf(R.certified_radius(f, mu, torch.zeros(4, dtype=torch.long), 1.0)).all()
    assert torch.isinf(R.certified_radius(f, mu, torch.zeros(4, dtype=torch.long), 1.0, mode="paper")).all()
    dup = torch.cat([mu, mu[:1]])                            # a copy of center 0 with another class
    cls = torch.tensor([0, 0, 0, 0, 1])
    r = R.certified_radius(f, dup, cls, 1.0)
    near0 = np_sqdist(f.numpy(), mu.numpy()).argmin(1) == 0
    assert (r[torch.as_tensor(near0)] == 0).all()
    assert R.certified_radius(f.float(), mu.float(), cls[:4], 1.0).dtype == torch.float32


# ------------------------------------------------------------------ k-means


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (127, 3, 3), (127, 65, 130)])
def test_kmeans_assign_matches_brute_force(n, k, d):
    g = torch.Generator().manual_seed(n * k + d)
    x = torch.randn(n, d, generator=g, dtype=F64)
    c = torch.randn(k, d, generator=g, dtype=F64)
    labels, sq = R.kmeans_assign(x, c)
    dd = np_sqdist(x, c)
    np.testing.assert_array_equal(labels.numpy(), dd.argmin(1))
    np.testing.assert_allclose(sq.numpy(), dd.min(1), rtol=1e-10, atol=1e-10)
    assert labels.dtype == torch.int64
    l16, s16 = R.kmeans_assign(x.half(), c.half())
    assert s16.dtype == torch.float32


def test_kmeans_assign_ties_lower_index():
    x = torch.randn(7, 3, dtype=F64)
    c = torch.randn(3, 3, dtype=F64)
    c = torch.stack([c[0] + 10, c[1], c[1], c[2] + 10, c[1]])
    labels, _ = R.kmeans_assign(x[:1] * 0 + c[1], c)
    assert labels.tolist() == [1]


def test_kmeans_update_matches_loop():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(127, 3, generator=g, dtype=F64)
    labels = torch.randint(0, 5, (127,), generator=g)
    labels[labels == 3] = 4                                 # cluster 3 empty, cluster 5 too
    prev = torch.randn(6, 3, generator=g, dtype=F64)
    cen, counts = R.kmeans_update(x, labels, 6, prev_centers=prev.float())
    cen0, _ = R.kmeans_update(x, labels, 6)
    for m in range(6):
        rows = x.numpy()[labels.numpy() == m]
        assert counts[m] == len(rows)
        want = rows.mean(0) if len(rows) else prev[m].float().double().numpy()
        np.testing.assert_allclose(cen[m].numpy(), want, rtol=1e-12)
        if not len(rows):
            assert (cen0[m] == 0).all()


def np_kmeans_plusplus(x, k, seed, trials):
    """Greedy k-means++ in numpy, fed with the same random draws as the reference."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    idx = [int(torch.randint(0, n, (1,), generator=g))]
    closest = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        draws = torch.rand(trials, generator=g, dtype=F64).numpy()
        w = closest if closest.sum() > 0 else np.array([i not in idx for i in range(n)], float)
        cum = np.cumsum(w)
        cands = [min(int(np.searchsorted(cum, u * cum[-1], side="right")), n - 1) for u in draws]
        pots = [np.minimum(closest, ((x - x[c]) ** 2).sum(1)) for c in cands]
        b = int(np.argmin([p.sum() for p in pots]))
        closest, idx = pots[b], idx + [cands[b]]
    return idx


@pytest.mark.parametrize("trials", [None, 1, 5])
def test_kmeans_plusplus_matches_numpy_greedy(trials):
    x = torch.randn(127, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for seed in range(5):
        cen, idx = R.kmeans_plusplus(x, 9, generator=torch.Generator().manual_seed(seed),
                                     n_local_trials=trials)
        t = 2 + int(math.log(9)) if trials is None else trials
        assert idx.tolist() == np_kmeans_plusplus(x.numpy(), 9, seed, t)
        assert torch.equal(cen, x[idx]) and idx.dtype == torch.int64


def test_kmeans_plusplus_determinism_and_edge_cases():
    x = torch.randn(7, 3, dtype=torch.float32)
    a = R.kmeans_plusplus(x, 4, generator=torch.Generator().manual_seed(3))
    b = R.kmeans_plusplus(x, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert len(set(a[1].tolist())) == 4
    c1, i1 = R.kmeans_plusplus(x, 1, generator=torch.Generator().manual_seed(0))
    assert c1.shape == (1, 3)
    _, iall = R.kmeans_plusplus(x, 7, generator=torch.Generator().manual_seed(0))
    assert sorted(iall.tolist()) == list(range(7))
    _, one = R.kmeans_plusplus(x[:1], 1)
    assert one.tolist() == [0]
    ch, _ = R.kmeans_plusplus(x.half(), 2)
    assert ch.dtype == torch.float32


def test_kmeans_plusplus_duplicate_points():
    base = torch.randn(3, 2, dtype=F64)
    x = base.repeat(3, 1)                                   # 9 rows, 3 distinct values
    for seed in range(10):
        cen, idx = R.kmeans_plusplus(x, 5, generator=torch.Generator().manual_seed(seed))
        assert len(set(idx.tolist())) == 5                  # distinct rows even when values repeat
        first3 = {tuple(r) for r in cen[:3].tolist()}
        assert len(first3) == 3                             # every distinct value before any repeat


def test_kmeans_plusplus_d2_sampling_chi_square():
    ang = np.arange(6) * np.pi / 3
    pts = np.stack([np.cos(ang), np.sin(ang)], 1) * [1.0, 1.3]
    x = t64(pts)
    d = np_sqdist(pts, pts)
    runs = 6000
    counts = np.zeros((6, 6))
    for seed in range(runs):
        _, idx = R.kmeans_plusplus(x, 2, generator=torch.Generator().manual_seed(seed), n_local_trials=1)
        counts[idx[0], idx[1]] += 1
    assert np.trace(counts) == 0
    # the first center is uniform, the second is drawn with probability D^2 / sum D^2
    expected = d / d.sum(1, keepdims=True) * runs / 6
    off = ~np.eye(6, dtype=bool)
    assert scipy.stats.chisquare(counts[off], expected[off]).pvalue > 1e-3
    assert scipy.stats.chisquare(counts.sum(1)).pvalue > 1e-3
