"""k-means ops (assign, update, k-means++), KMeans and kmeans_per_group on every backend that runs here."""
import itertools

import numpy as np
import pytest
import scipy.stats
import torch

import clustr_fast
import clustr_fast.kmeans as kmeans_mod
from clustr_fast.ops.kmeans import (_reference_plusplus, kmeans_assign_op, kmeans_lloyd_step, kmeans_lloyd_step_op,
                                    kmeans_plusplus_op, kmeans_update_op, lloyd_step_runs_here, plusplus_draws,
                                    plusplus_segments)

from conftest import assert_close_f64, low_precision_dtypes

F64 = torch.float64
SHAPES = [(1, 1, 1), (7, 3, 3), (127, 65, 130), (1000, 3, 1), (1000, 65, 3)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _points(n, d, dtype=torch.float32, device="cpu", seed=0):
    return torch.randn(n, d, generator=_gen(seed)).to(device=device, dtype=dtype)


def f64_sqdist(x, c):
    x, c = x.double().cpu(), c.double().cpu()
    return (x[:, None, :] - c[None, :, :]).square().sum(-1)


def _scale(x, c):
    return x.double().cpu().square().sum(1) + c.double().cpu().square().sum(1).max() + 1.0


def assert_labels_nearest(labels, x, c, *, rtol=1e-5):
    """labels equal the float64 argmin up to exact ties (their distances agree to rounding)."""
    d = f64_sqdist(x, c)
    labels = labels.cpu()
    want = d.argmin(1)
    got_d = d.gather(1, labels[:, None])[:, 0]
    best = d.min(1).values
    slack = rtol * _scale(x, c)
    assert ((got_d - best) <= slack).all(), "a label is not a nearest center"
    differ = labels != want
    assert differ.float().mean() <= 0.01, f"{int(differ.sum())} labels differ from the float64 argmin"


# --------------------------------------------------------------------------- assign


@pytest.mark.parametrize("n,k,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_assign_matches_brute_force(backend, n, k, d, dtype):
    _, dev = backend
    x = _points(n, d, dtype, dev, seed=n + d)
    c = _points(k, d, dtype, dev, seed=k + 100) + 0.25
    labels, sq = clustr_fast.kmeans_assign(x, c)
    assert labels.dtype == torch.int64 and sq.dtype == dtype and labels.shape == (n,)
    assert_labels_nearest(labels, x, c)
    ref = f64_sqdist(x, c).min(1).values
    assert_close_f64(sq.cpu(), ref, dtype=dtype, scale=_scale(x, c))
    if dtype == F64:
        assert torch.equal(labels.cpu(), f64_sqdist(x, c).argmin(1))


def test_assign_low_precision_inputs(backend):
    name, dev = backend
    for dtype in low_precision_dtypes(name, dev):
        x = _points(127, 130, dtype, dev, seed=3)
        c = _points(65, 130, dtype, dev, seed=4)
        labels, sq = clustr_fast.kmeans_assign(x, c)
        assert sq.dtype == torch.float32
        ref = f64_sqdist(x, c).min(1).values
        plain = (x.cpu()[:, None, :] - c.cpu()[None, :, :]).square().sum(-1).min(1).values
        assert_close_f64(sq.cpu(), ref, dtype=dtype, plain=plain, scale=_scale(x, c))
        d = f64_sqdist(x, c)
        assert (d.gather(1, labels.cpu()[:, None])[:, 0] - d.min(1).values <= 2e-2 * _scale(x, c)).all()


def test_assign_ties_go_to_lower_index(backend):
    _, dev = backend
    base = _points(3, 4, F64, "cpu", seed=5)
    c = torch.stack([base[0] + 10, base[1], base[1], base[2] + 10, base[1]]).to(dev)
    x = torch.stack([base[1], base[1] + 1e-3, base[2]]).to(dev)
    labels, _ = clustr_fast.kmeans_assign(x, c)
    assert labels.tolist()[:2] == [1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_assign_ties_across_center_tiles_go_to_lower_index(backend, dtype):
    """Copies of the nearest center at 1 and 258: different center tiles on every backend (the
    CPU kernel's blocks hold 256 centers). Integer coordinates: every product and sum is exact,
    so the copies tie exactly whatever the order of the sums."""
    _, dev = backend
    g = _gen(8)
    c = (torch.randint(-4, 5, (260, 8), generator=g) + 20).to(dtype)
    x = torch.randint(-4, 5, (5, 8), generator=g).to(dtype)
    c[1] = c[258] = x[0]
    c[7] = c[259] = x[1] + 1.0
    labels, sq = clustr_fast.kmeans_assign(x.to(dev), c.to(dev))
    assert labels.tolist()[:2] == [1, 7] and sq[0].item() == 0.0


@pytest.mark.parametrize("n,k,d", [(13, 5, 7), (600, 17, 33), (601, 800, 130)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_assign_across_tiles_panels_and_center_blocks(backend, n, k, d, dtype):
    """The CPU kernel's layout: rows in tiles of 6 with every remainder, centers in panels of 16
    (float32) or 8 (float64) with a partial last panel, and, at 800 x 130, three center blocks
    and three row blocks. Labels are the float64 argmin up to exact ties; float64 exactly."""
    name, dev = backend
    if name == "triton" and dev.type == "cpu" and k > 100:
        pytest.skip("the interpreter is slow")
    x = _points(n, d, dtype, dev, seed=n + k)
    c = _points(k, d, dtype, dev, seed=k + 7) * 0.5
    for rows in (n, 1, 2, 3, 4, 5):  # every remainder tile
        labels, sq = clustr_fast.kmeans_assign(x[:rows], c)
        assert_labels_nearest(labels, x[:rows], c)
        ref = f64_sqdist(x[:rows], c).min(1).values
        assert_close_f64(sq.cpu(), ref, dtype=dtype, scale=_scale(x[:rows], c))
        if dtype == F64:
            assert torch.equal(labels.cpu(), f64_sqdist(x[:rows], c).argmin(1))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_assign_ties_across_lanes_panels_and_blocks_go_to_lower_index(backend, dtype):
    """Exact copies of the nearest center in the other vector of a panel (3 and 11), in another
    panel (5 and 21) and in another center block of the CPU kernel (2 and 790, d = 130).
    Integer coordinates: every product and sum is exact, so the copies tie exactly."""
    name, dev = backend
    if name == "triton" and dev.type == "cpu":
        pytest.skip("the interpreter is slow")
    g = _gen(81)
    c = (torch.randint(-3, 4, (800, 130), generator=g) + 6).to(dtype)
    x = torch.randint(-3, 4, (7, 130), generator=g).to(dtype)
    for row, (lo, hi) in enumerate([(3, 11), (5, 21), (2, 790)]):
        c[hi] = x[row]
        c[lo] = x[row]
    c[700] = x[3]  # a single nearest center in the last block
    labels, sq = clustr_fast.kmeans_assign(x.to(dev), c.to(dev))
    assert labels.tolist()[:4] == [3, 5, 2, 700]
    assert sq[:4].tolist() == [0.0] * 4
    assert_labels_nearest(labels, x, c)


def test_assign_zero_width_points(backend):
    """d = 0: every distance is 0, so every row takes the first center (of its group): the outputs
    are written by the kernels or filled, never left uninitialised."""
    _, dev = backend
    x, c = torch.randn(37, 0, device=dev), torch.randn(6, 0, device=dev)
    labels, sq = clustr_fast.kmeans_assign(x, c)
    assert torch.equal(labels.cpu(), torch.zeros(37, dtype=torch.int64)) and torch.equal(sq.cpu(), torch.zeros(37))
    groups = torch.randint(0, 3, (37,), generator=_gen(44)).to(dev)
    labels, sq = kmeans_assign_op(x, c, 0, groups, 2)
    assert torch.equal(labels.cpu(), 2 * groups.cpu()) and torch.equal(sq.cpu(), torch.zeros(37))


def test_assign_non_contiguous(backend):
    _, dev = backend
    x = _points(60, 30, torch.float32, dev, seed=6)[::2, ::3]
    c = _points(30, 10, torch.float32, dev, seed=7).t().contiguous().t()[::2]
    labels, sq = clustr_fast.kmeans_assign(x, c)
    assert_labels_nearest(labels, x, c)


def test_assign_grouped(backend):
    _, dev = backend
    n, k, d = 127, 3, 5
    x = _points(n, d, torch.float32, dev, seed=8)
    groups = torch.randint(0, 4, (n,), generator=_gen(9)).to(dev)
    c = _points(4 * k, d, torch.float32, dev, seed=10)
    labels, sq = kmeans_assign_op(x, c, 0, groups, k)
    dist = f64_sqdist(x, c)
    g = groups.cpu()
    for i in range(n):
        own = dist[i, g[i] * k:(g[i] + 1) * k]
        assert labels[i].item() == g[i] * k + int(own.argmin())
        assert abs(sq[i].item() - own.min().item()) <= 1e-5 * (1 + own.min().item())
    # exact ties inside a group go to the lower index: copies of x[0] at slots 0 and 2 of its group
    c2 = c.clone()
    g0 = int(g[0])
    c2[g0 * k] = c2[g0 * k + 2] = x[0]
    c2[g0 * k + 1] = x[0] + 5.0
    lab2, sq2 = kmeans_assign_op(x[:1], c2, 0, groups[:1], k)
    assert lab2.item() == g0 * k and sq2.item() == 0.0


# --------------------------------------------------------------------------- update


def _loop_means(x, labels, k, prev):
    x64 = x.double().cpu()
    out = torch.zeros(k, x.shape[1], dtype=F64)
    counts = torch.zeros(k, dtype=torch.int64)
    for j in range(k):
        rows = x64[labels.cpu() == j]
        counts[j] = rows.shape[0]
        if rows.shape[0]:
            out[j] = rows.mean(0)
        elif prev is not None:
            out[j] = prev[j].double().cpu()
    return out, counts


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (127, 6, 3), (1000, 65, 130)])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_update_matches_loop(backend, n, k, d, deterministic, dtype):
    _, dev = backend
    x = _points(n, d, dtype, dev, seed=11)
    labels = torch.randint(0, k, (n,), generator=_gen(12))
    if k > 3:
        labels[labels == 3] = 2  # cluster 3 empty (and others by chance)
    labels = labels.to(dev)
    prev = _points(k, d, dtype, dev, seed=13)
    torch.use_deterministic_algorithms(deterministic)
    try:
        cen, counts = clustr_fast.kmeans_update(x, labels, k, prev_centers=prev)
        cen0, _ = clustr_fast.kmeans_update(x, labels, k)
        again, _ = clustr_fast.kmeans_update(x, labels, k, prev_centers=prev)
    finally:
        torch.use_deterministic_algorithms(False)
    want, wcounts = _loop_means(x, labels, k, prev)
    assert torch.equal(counts.cpu(), wcounts) and counts.dtype == torch.int64
    assert cen.dtype == dtype
    assert_close_f64(cen.cpu(), want, dtype=dtype)
    assert (cen0.cpu()[wcounts == 0] == 0).all()
    if deterministic:
        assert torch.equal(again, cen)


def test_update_float64_and_half(backend):
    name, dev = backend
    x = _points(127, 7, F64, dev, seed=14)
    labels = torch.randint(0, 5, (127,), generator=_gen(15)).to(dev)
    cen, _ = clustr_fast.kmeans_update(x, labels, 5)
    want, _ = _loop_means(x, labels, 5, None)
    assert cen.dtype == F64
    assert_close_f64(cen.cpu(), want, dtype=F64, rtol=1e-12)
    for dtype in low_precision_dtypes(name, dev):
        cen16, _ = clustr_fast.kmeans_update(x.to(dtype), labels, 5)
        assert cen16.dtype == torch.float32
        want16, _ = _loop_means(x.to(dtype), labels, 5, None)
        assert_close_f64(cen16.cpu(), want16, dtype=torch.float32)


# --------------------------------------------------------------------------- fused Lloyd step


def _step_backend(backend):
    name, dev = backend
    if not lloyd_step_runs_here(dev):
        pytest.skip(f"the fused Lloyd step has no {name} backend (assign + update run there)")
    return name, dev


@pytest.mark.parametrize("n,k,d", SHAPES + [(9000, 65, 3), (5000, 7, 130)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_lloyd_step_is_assign_then_update(backend, n, k, d, dtype):
    """One pass gives the labels of kmeans_assign and the means of kmeans_update(prev_centers=centers)."""
    _, dev = _step_backend(backend)
    x = _points(n, d, dtype, dev, seed=n + 2 * d)
    c = _points(k, d, dtype, dev, seed=k + 200) + 0.5
    c[-1] += 50.0  # far away: an empty cluster that keeps its center
    labels, sq, cen, counts = kmeans_lloyd_step(x, c)
    assert labels.dtype == torch.int64 and sq.dtype == dtype and cen.dtype == dtype and counts.dtype == torch.int64
    a_labels, a_sq = clustr_fast.kmeans_assign(x, c)
    assert torch.equal(labels, a_labels) and torch.equal(sq, a_sq)
    assert_labels_nearest(labels, x, c)
    want, wcounts = _loop_means(x, labels, k, c)
    assert torch.equal(counts.cpu(), wcounts)
    assert_close_f64(cen.cpu(), want, dtype=dtype, rtol=1e-5 if dtype == torch.float32 else 1e-12)
    if k > 1:
        assert counts[-1] == 0 and torch.equal(cen[-1], c[-1])


@pytest.mark.parametrize("n,gk,d", [(7, 1, 1), (127, 3, 130), (9000, 2, 3), (3000, 17, 5)])
def test_lloyd_step_grouped(backend, n, gk, d):
    _, dev = _step_backend(backend)
    G = 4
    x = _points(n, d, torch.float32, dev, seed=31)
    groups = torch.randint(0, G, (n,), generator=_gen(32)).to(dev)
    c = _points(G * gk, d, torch.float32, dev, seed=33)
    labels, sq, cen, counts = kmeans_lloyd_step(x, c, groups=groups, group_k=gk)
    a_labels, a_sq = kmeans_assign_op(x, c, 0, groups, gk)
    assert torch.equal(labels, a_labels) and torch.equal(sq, a_sq)
    assert torch.equal(labels // gk, groups)
    dist = f64_sqdist(x, c)
    own = torch.stack([dist[i, g * gk:(g + 1) * gk] for i, g in enumerate(groups.tolist())])
    assert_close_f64(sq.cpu(), own.min(1).values, dtype=torch.float32, scale=_scale(x, c))
    want, wcounts = _loop_means(x, labels, G * gk, c)
    assert torch.equal(counts.cpu(), wcounts)
    assert_close_f64(cen.cpu(), want, dtype=torch.float32)


def test_lloyd_step_low_precision(backend):
    name, dev = _step_backend(backend)
    for dtype in low_precision_dtypes(name, dev):
        x = _points(127, 130, dtype, dev, seed=34)
        c = _points(65, 130, dtype, dev, seed=35)
        labels, sq, cen, _ = kmeans_lloyd_step(x, c)
        assert sq.dtype == torch.float32 and cen.dtype == torch.float32
        plain = (x.cpu()[:, None, :] - c.cpu()[None, :, :]).square().sum(-1).min(1).values
        assert_close_f64(sq.cpu(), f64_sqdist(x, c).min(1).values, dtype=dtype, plain=plain, scale=_scale(x, c))
        want, _ = _loop_means(x, labels, 65, c)
        assert_close_f64(cen.cpu(), want, dtype=torch.float32)


def test_lloyd_step_deterministic_across_thread_counts():
    x = _points(20_000, 33, torch.float32, "cpu", seed=36)
    c = _points(40, 33, torch.float32, "cpu", seed=37)
    groups = torch.randint(0, 5, (20_000,), generator=_gen(38))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(kmeans_lloyd_step(x, c) + kmeans_lloyd_step(x, c, groups=groups, group_k=8))
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other))


def test_fused_lloyd_iterations_equal_two_op_iterations(monkeypatch):
    """KMeans and kmeans_per_group give the same result with the fused step and with assign + update."""
    x = torch.from_numpy(_blobs(3000, 6, 8, 5))
    groups = torch.randint(0, 3, (3000,), generator=_gen(39))
    fused = clustr_fast.KMeans(8, random_state=2, tol=0.0, max_iter=30).fit(x)
    fused_g = clustr_fast.kmeans_per_group(x, groups, 4, max_iter=15, generator=_gen(40))
    monkeypatch.setattr(kmeans_mod, "lloyd_step_runs_here", lambda device: False)
    plain = clustr_fast.KMeans(8, random_state=2, tol=0.0, max_iter=30).fit(x)
    plain_g = clustr_fast.kmeans_per_group(x, groups, 4, max_iter=15, generator=_gen(40))
    assert torch.equal(fused.labels_, plain.labels_) and fused.n_iter_ == plain.n_iter_
    assert torch.allclose(fused.cluster_centers_, plain.cluster_centers_, rtol=1e-6, atol=1e-6)
    assert abs(fused.inertia_ - plain.inertia_) <= 1e-6 * plain.inertia_
    assert torch.equal(fused_g[0], plain_g[0])
    assert torch.allclose(fused_g[1], plain_g[1], rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 1e307-scale data: sums and distances overflow
def test_kmeans_finite_check():
    x = torch.randn(50, 3, dtype=F64)
    big = x * 1e307  # finite, but its sum overflows: the exact check decides
    clustr_fast.KMeans(2, random_state=0, max_iter=2).fit(big)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[7, 1] = bad
        with pytest.raises(ValueError, match="`X` contains NaN or infinity"):
            clustr_fast.KMeans(2, random_state=0).fit(y)
        with pytest.raises(ValueError, match="`x` contains non-finite"):
            clustr_fast.kmeans_per_group(y, torch.zeros(50, dtype=torch.long), 2)


# --------------------------------------------------------------------------- k-means++


@pytest.mark.parametrize("trials", [1, None, 5])
def test_plusplus_matches_reference_algorithm(backend, trials):
    """Same draws -> the same greedy choices as the plain-PyTorch algorithm."""
    name, dev = backend
    n_long = 400 if name == "triton" and dev.type == "cpu" else 1000  # the interpreter is slow
    for n, d in ((127, 3), (n_long, 20)):  # short rows; rows of whole vectors and a tail
        x = _points(n, d, F64, dev, seed=16)
        _, idx = clustr_fast.kmeans_plusplus(x, 9, generator=_gen(n), n_local_trials=trials)
        t = 2 + int(np.log(9)) if trials is None else trials
        first, draws = plusplus_draws(torch.tensor([n]), 9, t, _gen(n), "cpu")
        want = _reference_plusplus(x.cpu(), torch.tensor([0, n]), 9, first, draws)[0]
        assert idx.tolist() == want.tolist()


@pytest.mark.parametrize("case", ["u=0", "u=0, zero-weight blocks", "u=1-"])
def test_plusplus_extreme_draws_pick_rows_of_positive_weight(backend, case):
    """A draw u in [0, 1) picks the first row whose running D^2 weight exceeds u * total: with
    u = 0 the first row of positive weight, never an already chosen row of weight 0 (torch.rand
    can return 0), also when whole blocks of rows before it weigh 0 (copies of the first
    center); with u just below 1 the last row of positive weight."""
    _, dev = backend
    x = _points(1500, 5, torch.float32, dev, seed=18)  # above one Triton block of rows (64 / 512)
    zero_rows = 600 if "blocks" in case else 1
    if zero_rows > 1:
        x[:zero_rows] = x[0]
    offsets = torch.tensor([0, 1500])
    u = 0.0 if case.startswith("u=0") else 1.0 - 2.0 ** -24
    draws = torch.full((3, 1, 3), u, dtype=torch.float64)
    first = torch.tensor([0 if u == 0.0 else 1499])
    got = kmeans_plusplus_op(x, offsets.to(dev), 4, first.to(dev), draws.to(dev)).cpu()
    assert torch.equal(got, _reference_plusplus(x.cpu(), offsets, 4, first, draws))
    want = [0] + [zero_rows + i for i in range(3)] if u == 0.0 else [1499, 1498, 1497, 1496]
    assert got[0].tolist() == want


def test_plusplus_float32_segments_and_determinism(backend):
    _, dev = backend
    x = _points(60, 33, torch.float32, dev, seed=17)
    offsets = torch.tensor([0, 7, 30, 60])
    a = plusplus_segments(x, offsets, 7, generator=_gen(3))
    b = plusplus_segments(x, offsets, 7, generator=_gen(3))
    assert torch.equal(a, b) and a.shape == (3, 7)
    first, draws = plusplus_draws(offsets.diff(), 7, 3, _gen(4), "cpu")
    got = kmeans_plusplus_op(x, offsets.to(dev), 7, (first + offsets[:-1]).to(dev), draws.to(dev))
    want = _reference_plusplus(x.cpu(), offsets, 7, first + offsets[:-1], draws)
    assert torch.equal(got.cpu(), want)
    for g in range(3):  # indices stay in their segment, all distinct
        row = a[g].cpu()
        assert ((row >= offsets[g]) & (row < offsets[g + 1])).all() and len(set(row.tolist())) == 7
    assert sorted(a[0].tolist()) == list(range(7))  # k = segment size takes every row


def test_plusplus_edge_cases(backend):
    _, dev = backend
    x = _points(7, 3, torch.float32, dev, seed=18)
    c1, i1 = clustr_fast.kmeans_plusplus(x, 1, generator=_gen(0))
    assert c1.shape == (1, 3) and torch.equal(c1, x[i1])
    _, iall = clustr_fast.kmeans_plusplus(x, 7, generator=_gen(0))
    assert sorted(iall.tolist()) == list(range(7))
    _, one = clustr_fast.kmeans_plusplus(x[:1], 1, generator=_gen(1))
    assert one.tolist() == [0]
    ch, _ = clustr_fast.kmeans_plusplus(x.half(), 2, generator=_gen(2))
    assert ch.dtype == torch.float32


def test_plusplus_duplicate_points(backend):
    _, dev = backend
    base = _points(3, 2, F64, "cpu", seed=19)
    x = base.repeat(3, 1).to(dev)  # 9 rows, 3 distinct values
    for seed in range(3):
        cen, idx = clustr_fast.kmeans_plusplus(x, 5, generator=_gen(seed))
        assert len(set(idx.tolist())) == 5
        assert len({tuple(r) for r in cen[:3].tolist()}) == 3  # every value before any repeat
    wide = (_points(5, 32, torch.float32, "cpu", seed=23) * 100).repeat(20, 1).to(dev)  # long rows, 100 rows
    cen, idx = clustr_fast.kmeans_plusplus(wide, 8, generator=_gen(24))
    assert len(set(idx.tolist())) == 8 and len({tuple(r) for r in cen[:5].tolist()}) == 5


def test_plusplus_all_points_equal_matches_the_reference(backend):
    """Every D^2 weight 0 after the first center: draws fall uniformly on the rows not chosen yet
    (their counts per block, then per row), and candidates of equal potential go to the first
    trial. 150 equal rows span several Triton blocks; the same draws give the reference's rows."""
    _, dev = backend
    x = _points(1, 6, torch.float32, "cpu", seed=25).repeat(150, 1)
    offsets = torch.tensor([0, 150])
    for seed in range(3):
        first, draws = plusplus_draws(offsets.diff(), 6, 3, _gen(26 + seed), "cpu")
        got = kmeans_plusplus_op(x.to(dev), offsets.to(dev), 6, first.to(dev), draws.to(dev)).cpu()
        assert torch.equal(got, _reference_plusplus(x, offsets, 6, first, draws))
        assert len(set(got[0].tolist())) == 6


def test_plusplus_d2_distribution_chi_square(backend):
    """Plain D^2 sampling (one trial): sequences of centers follow the D^2 probabilities."""
    name, dev = backend
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.5, 1.5]], dtype=F64)
    n = pts.shape[0]
    k, runs = (2, 160) if name == "triton" and dev.type == "cpu" else (3, 3000)  # the interpreter is slow
    x = pts.repeat(runs, 1).to(dev)
    offsets = torch.arange(runs + 1) * n
    idx = plusplus_segments(x, offsets, k, generator=_gen(20), n_local_trials=1).cpu() - offsets[:-1, None]
    d = f64_sqdist(pts, pts)
    cells = list(itertools.permutations(range(n), k))
    probs = []
    for seq in cells:
        p, closest = 1.0 / n, d[seq[0]].clone()
        for j in seq[1:]:
            p *= float(closest[j] / closest.sum())
            closest = torch.minimum(closest, d[j])
        probs.append(p)
    counts = {c: 0 for c in cells}
    for row in idx.tolist():
        counts[tuple(row)] += 1  # a repeated row would raise KeyError
    observed = np.array([counts[c] for c in cells], float)
    expected = np.array(probs) * runs
    assert abs(expected.sum() - runs) < 1e-6
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


# --------------------------------------------------------------------------- KMeans / per group


def _blobs(n, d, centers, seed):
    from sklearn.datasets import make_blobs
    x, _ = make_blobs(n, n_features=d, centers=centers, random_state=seed)
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["blobs", "random"])
def test_kmeans_inertia_close_to_sklearn(kind):
    from sklearn.cluster import KMeans as SKKMeans
    data = _blobs(3000, 8, 10, 0) if kind == "blobs" else np.random.default_rng(0).standard_normal((3000, 6)).astype(np.float32)
    sk = SKKMeans(10, n_init=3, random_state=0).fit(data)
    km = clustr_fast.KMeans(10, n_init=3, random_state=0).fit(torch.from_numpy(data))
    assert km.inertia_ <= sk.inertia_ * 1.01
    assert km.cluster_centers_.shape == (10, 8 if kind == "blobs" else 6)
    assert km.labels_.shape == (3000,) and 1 <= km.n_iter_ <= 300
    assert torch.equal(km.predict(torch.from_numpy(data)), km.labels_)
    d = f64_sqdist(torch.from_numpy(data), km.cluster_centers_).min(1).values.sum().item()
    assert abs(d - km.inertia_) <= 1e-4 * d


def test_kmeans_on_every_backend(backend):
    _, dev = backend
    x = torch.from_numpy(_blobs(150, 3, 4, 1)).to(dev)
    km = clustr_fast.KMeans(4, n_init=2, random_state=1).fit(x)
    with clustr_fast.use_backend("reference"):
        ref = clustr_fast.KMeans(4, n_init=2, random_state=1).fit(x.cpu())
    assert abs(km.inertia_ - ref.inertia_) <= 1e-3 * ref.inertia_
    assert km.cluster_centers_.device.type == dev.type
    lab16 = clustr_fast.KMeans(4, random_state=1).fit(x.half()).fit_predict(x.half())
    assert lab16.shape == (150,)
    with pytest.raises(ValueError, match="n_clusters"):
        clustr_fast.KMeans(400).fit(x)


def test_kmeans_per_group(backend):
    _, dev = backend
    sizes = [40, 7, 90, 3]
    k = 3
    x = torch.cat([torch.from_numpy(_blobs(s, 4, 3, 10 + g)) + 20 * g for g, s in enumerate(sizes)]).to(dev)
    groups = torch.cat([torch.full((s,), g) for g, s in enumerate(sizes)])
    perm = torch.randperm(len(groups), generator=_gen(21))
    x, groups = x[perm.to(dev)], groups[perm].to(dev)
    labels, centers = clustr_fast.kmeans_per_group(x, groups, k, max_iter=50, tol=0.0, generator=_gen(22))
    assert labels.shape == groups.shape and centers.shape == (len(sizes) * k, 4)
    assert torch.equal(labels.cpu() // k, groups.cpu())
    for j in range(len(sizes) * k):  # a fixed point: every center is the mean of its rows
        rows = x.cpu()[labels.cpu() == j]
        if len(rows):
            assert torch.allclose(centers.cpu()[j], rows.mean(0), atol=1e-4)
    dist = f64_sqdist(x, centers)
    for g in range(len(sizes)):  # and every row sits with its nearest center of its group
        m = groups.cpu() == g
        own = dist[m][:, g * k:(g + 1) * k]
        assert ((own.gather(1, (labels.cpu()[m] - g * k)[:, None])[:, 0] - own.min(1).values) <= 1e-4).all()
    with pytest.raises(ValueError, match="group 3 has 3 rows, fewer than `k`=4"):
        clustr_fast.kmeans_per_group(x, groups, 4)


# --------------------------------------------------------------------------- errors, opcheck


def test_bad_inputs_name_the_argument():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="centers"):
        clustr_fast.kmeans_assign(x, torch.randn(4, 5))
    with pytest.raises(TypeError, match="centers"):
        clustr_fast.kmeans_assign(x, torch.randn(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="precision"):
        clustr_fast.kmeans_assign(x, x, precision="fast")
    with pytest.raises(ValueError, match="labels"):
        clustr_fast.kmeans_update(x, torch.full((10,), 5), 5)
    with pytest.raises(ValueError, match="prev_centers"):
        clustr_fast.kmeans_update(x, torch.zeros(10, dtype=torch.long), 2, prev_centers=torch.randn(3, 3))
    with pytest.raises(ValueError, match="k"):
        clustr_fast.kmeans_plusplus(x, 11)
    with pytest.raises(ValueError, match="x"):
        clustr_fast.kmeans_plusplus(torch.full((4, 2), float("nan")), 2)
    with pytest.raises(TypeError, match="groups"):
        clustr_fast.kmeans_per_group(x, torch.zeros(10), 2)
    with pytest.raises(ValueError, match="groups"):
        clustr_fast.kmeans_per_group(x, torch.zeros(9, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="init"):
        clustr_fast.KMeans(3, init="kmeans").fit(x)
    with pytest.raises(ValueError, match="centers"):
        kmeans_lloyd_step(x, torch.randn(4, 5))
    with pytest.raises(ValueError, match="group_k"):
        kmeans_lloyd_step(x, torch.randn(4, 3), groups=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="groups"):
        kmeans_lloyd_step(x, torch.randn(4, 3), groups=torch.full((10,), 2), group_k=2)


def test_opcheck_every_op():
    x = torch.randn(20, 5)
    c = torch.randn(4, 5)
    torch.library.opcheck(kmeans_assign_op, (x, c, 0, None, 0))
    torch.library.opcheck(kmeans_assign_op, (x, c, 0, torch.randint(0, 2, (20,)), 2))
    torch.library.opcheck(kmeans_update_op, (x, torch.randint(0, 4, (20,)), 4, c, False))
    torch.library.opcheck(kmeans_update_op, (x, torch.randint(0, 4, (20,)), 4, None, True))
    first, draws = plusplus_draws(torch.tensor([12, 8]), 3, 2, _gen(0), "cpu")
    torch.library.opcheck(kmeans_plusplus_op, (x, torch.tensor([0, 12, 20]), 3, first + torch.tensor([0, 12]), draws))
    torch.library.opcheck(kmeans_lloyd_step_op, (x, c, 0, None, 0))
    torch.library.opcheck(kmeans_lloyd_step_op, (x, c, 0, torch.randint(0, 2, (20,)), 2))
    torch.library.opcheck(kmeans_lloyd_step_op, (x.double(), c.double(), 0, None, 0))


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_gpu_backends_large(name):
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} not built")
    x = _points(20_000, 130, torch.float32, "cuda", seed=30)
    c = _points(1_100, 130, torch.float32, "cuda", seed=31)
    with clustr_fast.use_backend(name):
        labels, sq = clustr_fast.kmeans_assign(x, c)
        labels_hi, _ = clustr_fast.kmeans_assign(x, c, precision="high")
        cen, counts = clustr_fast.kmeans_update(x, labels, 1_100)
        torch.use_deterministic_algorithms(True)
        try:
            cen_det, _ = clustr_fast.kmeans_update(x, labels, 1_100)
        finally:
            torch.use_deterministic_algorithms(False)
        _, idx = clustr_fast.kmeans_plusplus(x[:3000].double(), 50, generator=torch.Generator("cuda").manual_seed(0))
        _, idx32 = clustr_fast.kmeans_plusplus(x[:3000], 50, generator=torch.Generator("cuda").manual_seed(0))
    assert_labels_nearest(labels, x, c)
    assert (labels_hi.cpu() == labels.cpu()).float().mean() > 0.95
    # "high" may round products to TF32 (about 5e-4 of ||x||^2 + ||c||^2 per distance), never more
    assert_labels_nearest(labels_hi, x, c, rtol=2e-3)
    assert_close_f64(sq.cpu(), f64_sqdist(x, c).min(1).values, dtype=torch.float32, scale=_scale(x, c))
    want, wcounts = _loop_means(x, labels, 1_100, None)
    assert torch.equal(counts.cpu(), wcounts)
    assert_close_f64(cen.cpu(), want, dtype=torch.float32)
    assert_close_f64(cen_det.cpu(), want, dtype=torch.float32)
    g = torch.Generator("cuda").manual_seed(0)
    first, draws = plusplus_draws(torch.tensor([3000], device="cuda"), 50, 2 + int(np.log(50)), g, "cuda")
    want_idx = _reference_plusplus(x[:3000].double().cpu(), torch.tensor([0, 3000]), 50, first.cpu(), draws.cpu())[0]
    assert idx.tolist() == want_idx.tolist()
    assert len(set(idx32.tolist())) == 50


def test_kmeans_stops_by_sklearns_rule():
    """The tolerance is scikit-learn's (tol x the mean per-feature variance), and a center shift
    within it stops the iterations even while labels still change (the best of n_init runs:
    tests/test_estimator.py)."""
    from sklearn.cluster._kmeans import _tolerance as sk_tolerance
    x = _points(400, 3, torch.float32, "cpu", seed=40)
    assert kmeans_mod.tolerance(x, 1e-3) == pytest.approx(float(sk_tolerance(x.numpy(), 1e-3)), rel=1e-6)
    loose = clustr_fast.KMeans(6, tol=10.0, max_iter=30, random_state=3).fit(x)
    strict = clustr_fast.KMeans(6, tol=0.0, max_iter=30, random_state=3).fit(x)
    assert loose.n_iter_ == 1 and strict.n_iter_ > 2


# --------------------------------------------------------------------------- sample weights


def _weighted_loop_means(x, labels, k, w, prev):
    x64, w64 = x.double().cpu(), w.double().cpu()
    out = torch.zeros(k, x.shape[1], dtype=F64)
    wsum = torch.zeros(k, dtype=F64)
    for j in range(k):
        m = labels.cpu() == j
        wsum[j] = w64[m].sum()
        if wsum[j] > 0:
            out[j] = (x64[m] * w64[m, None]).sum(0) / wsum[j]
        elif prev is not None:
            out[j] = prev[j].double().cpu()
    return out, wsum


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (127, 6, 3), (1000, 65, 130)])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_weighted_update_matches_loop(backend, n, k, d, deterministic, dtype):
    """centers_j = sum w_i x_i / W_j, W_j the weight sums (second output); W_j = 0 keeps prev_centers[j]."""
    _, dev = backend
    x = _points(n, d, dtype, dev, seed=50)
    labels = torch.randint(0, k, (n,), generator=_gen(51)).to(dev)
    w = torch.rand(n, generator=_gen(52)).to(device=dev, dtype=dtype)
    if n > 3:
        w[labels == labels[0]] = 0  # a cluster with rows and no weight
    prev = _points(k, d, dtype, dev, seed=53)
    torch.use_deterministic_algorithms(deterministic)
    try:
        cen, wsum = clustr_fast.kmeans_update(x, labels, k, prev_centers=prev, sample_weight=w)
        ones, counts = clustr_fast.kmeans_update(x, labels, k, prev_centers=prev,
                                                 sample_weight=torch.ones(n, dtype=dtype, device=dev))
        plain, plain_counts = clustr_fast.kmeans_update(x, labels, k, prev_centers=prev)
    finally:
        torch.use_deterministic_algorithms(False)
    want, want_w = _weighted_loop_means(x, labels, k, w, prev)
    assert wsum.dtype == (F64 if dtype == F64 else torch.float32) and plain_counts.dtype == torch.int64
    assert_close_f64(cen.cpu(), want, dtype=dtype)
    assert_close_f64(wsum.cpu(), want_w, dtype=dtype)
    assert_close_f64(ones.cpu(), plain.cpu().double(), dtype=dtype)
    assert torch.equal(counts.cpu().round().long(), plain_counts.cpu())


@pytest.mark.parametrize("n,k,d", [(127, 6, 3), (3000, 65, 33)])
def test_weighted_lloyd_step_is_assign_then_update(backend, n, k, d):
    _, dev = backend
    x = _points(n, d, torch.float32, dev, seed=54)
    c = _points(k, d, torch.float32, dev, seed=55) + 0.5
    w = torch.rand(n, generator=_gen(56)).to(dev)
    with clustr_fast.use_backend("reference"):
        want = kmeans_lloyd_step(x.cpu(), c.cpu(), sample_weight=w.cpu())
    if dev.type != "cpu" or not lloyd_step_runs_here(dev):
        pytest.skip("the fused step runs on the CPU and reference backends")
    got = kmeans_lloyd_step(x, c, sample_weight=w)
    assert torch.equal(got[0].cpu(), want[0])
    for a, b in zip(got[1:], want[1:]):
        assert_close_f64(a.cpu(), b.double(), dtype=torch.float32)
    torch.library.opcheck(kmeans_lloyd_step_op, (x, c, 0, None, 0, w))
    torch.library.opcheck(kmeans_update_op, (x, got[0], k, c, False, w))


@pytest.mark.parametrize("trials", [1, None, 5])
def test_weighted_plusplus_matches_reference_algorithm(backend, trials):
    """Draws by w_i D_i^2 and potentials sum_i w_i D_i^2 on every backend, from the same uniforms;
    rows of weight 0 are never chosen."""
    _, dev = backend
    for n, d in ((200, 3), (1500, 33)):  # above one block of rows (64 / 512)
        x = _points(n, d, F64, dev, seed=57)
        w = torch.rand(n, generator=_gen(58), dtype=F64).to(dev)
        w[::3] = 0
        offsets = torch.tensor([0, n // 3, n])
        t = 2 + int(np.log(9)) if trials is None else trials
        first, draws = plusplus_draws(offsets.diff(), 9, t, _gen(59), "cpu", weights=w.cpu())
        first = first + offsets[:-1]
        got = kmeans_plusplus_op(x, offsets.to(dev), 9, first.to(dev), draws.to(dev), w).cpu()
        want = _reference_plusplus(x.cpu(), offsets, 9, first, draws, w.cpu())
        assert got.tolist() == want.tolist()
        assert (w.cpu()[got.reshape(-1)] > 0).all()


def test_plusplus_takes_sklearns_keywords_and_array_likes():
    from sklearn.cluster import kmeans_plusplus as sk_plusplus
    from sklearn.datasets import make_blobs
    x, _ = make_blobs(200, n_features=4, centers=5, random_state=0)
    sw = np.random.RandomState(1).uniform(0.5, 2.0, 200)
    centers, idx = clustr_fast.kmeans_plusplus(x, 5, random_state=0, sample_weight=sw)
    assert isinstance(centers, np.ndarray) and isinstance(idx, np.ndarray) and centers.dtype == np.float64
    np.testing.assert_array_equal(centers, x[idx])
    sk_centers, sk_idx = sk_plusplus(x, 5, random_state=0, sample_weight=sw)
    np.testing.assert_array_equal(idx, sk_idx)  # the same draws as scikit-learn's
    again = clustr_fast.kmeans_plusplus(x.tolist(), 5, random_state=np.random.RandomState(0), sample_weight=sw,
                                        x_squared_norms=(x ** 2).sum(1), n_local_trials=None)
    np.testing.assert_array_equal(again[1], idx)
    t_centers, t_idx = clustr_fast.kmeans_plusplus(torch.from_numpy(x), 5, random_state=0,
                                                   sample_weight=torch.from_numpy(sw))
    assert isinstance(t_idx, torch.Tensor) and t_idx.tolist() == idx.tolist()
    g = clustr_fast.kmeans_plusplus(torch.from_numpy(x), 5, generator=_gen(3), sample_weight=torch.from_numpy(sw))
    assert g[1].shape == (5,)
    with pytest.raises(ValueError, match="generator"):
        clustr_fast.kmeans_plusplus(x, 5, random_state=0, generator=_gen(0))
    with pytest.raises(ValueError, match="sample_weight"):
        clustr_fast.kmeans_plusplus(x, 5, sample_weight=-sw)
    with pytest.raises(ValueError, match="sample_weight"):
        clustr_fast.kmeans_plusplus(x, 5, sample_weight=sw[:10])


def test_weighted_inputs_name_the_argument():
    x = torch.randn(10, 3)
    labels = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="sample_weight"):
        clustr_fast.kmeans_update(x, labels, 2, sample_weight=torch.ones(9))
    with pytest.raises(TypeError, match="sample_weight"):
        clustr_fast.kmeans_update(x, labels, 2, sample_weight=torch.ones(10, dtype=torch.long))
    with pytest.raises(ValueError, match="sample_weight"):
        clustr_fast.kmeans_update(x, labels, 2, sample_weight=torch.full((10,), float("nan")))
    with pytest.raises(ValueError, match="sample_weight"):
        clustr_fast.kmeans_update(x, labels, 2, sample_weight=torch.zeros(10))
