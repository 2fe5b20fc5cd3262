"""Lloyd's algorithm per group (kmeans_lloyd_groups and its stepwise form) on every backend here.

Every group is its own k-means problem: running all groups together must give, group by group,
what running that group alone gives (labels, centers, number of iterations), whatever the
tolerance, the thread count or the backend.
"""
import pytest
import torch

import clustr_fast
from clustr_fast.ops.kmeans import (group_tolerances, kmeans_assign_op, kmeans_fit_groups_op, kmeans_lloyd_groups_op,
                                    kmeans_update_op, lloyd_groups_runs_here, lloyd_groups_stepwise,
                                    plusplus_draws, plusplus_segments)

from conftest import low_precision_dtypes

SIZES = [40, 7, 90, 33]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grouped_points(sizes, d, dtype=torch.float32, device="cpu", seed=0, spread=3.0):
    """Groups of blob-like points (a few clusters per group), rows sorted by group."""
    g = _gen(seed)
    parts = []
    for i, n in enumerate(sizes):
        means = spread * torch.randn(3, d, generator=g) + 10.0 * i
        parts.append(means[torch.randint(0, 3, (n,), generator=g)] + torch.randn(n, d, generator=g))
    offsets = torch.tensor([0] + sizes).cumsum(0)
    return torch.cat(parts).to(device=device, dtype=dtype), offsets


def _initial_centers(x, offsets, k, seed):
    g = _gen(seed)
    rows = [int(offsets[i]) + torch.randperm(int(offsets[i + 1] - offsets[i]), generator=g)[:k]
            for i in range(len(offsets) - 1)]
    return x[torch.cat(rows).to(x.device)].float() if x.dtype != torch.float64 else x[torch.cat(rows).to(x.device)]


def _run(x, offsets, centers, max_iter, tol):
    """The path kmeans_per_group takes on this device and backend."""
    if lloyd_groups_runs_here(x.device):
        return kmeans_lloyd_groups_op(x, offsets, centers, max_iter, tol, 0)
    return lloyd_groups_stepwise(x.float() if x.dtype != torch.float64 else x, offsets, centers, max_iter, tol, 0,
                                 kmeans_assign_op, kmeans_update_op)


def _f64_sqdist_own(x, centers, labels):
    return (x.double().cpu() - centers.double().cpu()[labels.cpu()]).square().sum(1)


@pytest.mark.parametrize("k,tol", [(1, 0.0), (3, 0.0), (3, 1e-2), (3, 0.1), (10, 0.0)])
def test_groups_together_equal_groups_alone(backend, k, tol):
    """k = 10 takes the explicit-differences path of the CPU kernel, k <= 8 the directions path."""
    _, dev = backend
    sizes = [s + k for s in SIZES]
    x, offsets = _grouped_points(sizes, 9, device=dev, seed=1)
    centers = _initial_centers(x, offsets, k, seed=2)
    labels, sq, cen, n_iter = _run(x, offsets, centers, 30, tol)
    assert labels.shape == (x.shape[0],) and cen.shape == centers.shape and n_iter.shape == (len(sizes),)
    for g in range(len(sizes)):
        r0, r1 = int(offsets[g]), int(offsets[g + 1])
        one = torch.tensor([0, r1 - r0])
        lab1, sq1, cen1, it1 = _run(x[r0:r1], one, centers[g * k:(g + 1) * k], 30, tol)
        assert torch.equal(labels[r0:r1].cpu() - g * k, lab1.cpu())
        assert int(n_iter[g]) == int(it1[0])
        torch.testing.assert_close(cen[g * k:(g + 1) * k].cpu(), cen1.cpu(), rtol=1e-6, atol=1e-6)
    assert (labels.cpu() // k == torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))).all()
    want = _f64_sqdist_own(x, cen, labels)
    torch.testing.assert_close(sq.double().cpu(), want, rtol=1e-5, atol=1e-4)


def test_cpu_kernel_equals_stepwise_reference():
    """The CPU kernel (incremental sums, directions form) against the stepwise reference algorithm."""
    x, offsets = _grouped_points([300, 121, 257], 33, seed=3)
    for k in (2, 5, 9):
        centers = _initial_centers(x, offsets, k, seed=4)
        for tol in (0.0, 1e-3):
            got = kmeans_lloyd_groups_op(x, offsets, centers, 25, tol, 0)
            from clustr_fast import use_backend
            with use_backend("reference"):
                want = kmeans_lloyd_groups_op(x, offsets, centers, 25, tol, 0)
            assert torch.equal(got[0], want[0]) and torch.equal(got[3], want[3])
            torch.testing.assert_close(got[2], want[2], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


def test_each_group_stops_on_its_own(backend):
    """A group whose points sit on its centers stops after one iteration while the others go on."""
    _, dev = backend
    k = 2
    x, offsets = _grouped_points([60, 80], 5, device=dev, seed=5)
    still = torch.cat([torch.full((30, 5), -50.0), torch.full((30, 5), -40.0)]).to(dev)  # two exact clusters
    x = torch.cat([still, x])
    offsets = torch.tensor([0, 60, 120, 200])
    centers = torch.cat([still[[0, 30]], _initial_centers(x[60:], offsets[1:] - 60, k, seed=6)])
    _, _, cen, n_iter = _run(x, offsets, centers, 50, 0.0)
    assert int(n_iter[0]) == 1 and int(n_iter[1]) >= 1 and int(n_iter[2]) >= 1
    assert torch.equal(cen[:2].cpu(), still[[0, 30]].cpu())
    _, _, _, big_tol = _run(x, offsets, centers, 50, 1e9)  # every shift is within tolerance: one iteration
    assert big_tol.tolist() == [1, 1, 1]
    lab0, sq0, cen0, it0 = _run(x, offsets, centers, 0, 0.0)  # no iteration: nearest initial center
    assert it0.tolist() == [0, 0, 0] and torch.equal(cen0.cpu(), centers.cpu())
    d = (x.double().cpu()[:, None, :] - centers.double().cpu()[None]).square().sum(-1)
    own = torch.repeat_interleave(torch.arange(3), torch.tensor([60, 60, 80]))
    mask = (torch.arange(3 * k)[None, :] // k) != own[:, None]
    assert torch.equal(lab0.cpu(), d.masked_fill(mask, float("inf")).argmin(1))


@pytest.mark.parametrize("tol", [0.0, 1e-2])
def test_reading_the_stop_flag_less_often_changes_nothing(backend, tol):
    """On a GPU the Lloyd loops read "any group still active" every few iterations only
    (LLOYD_SYNC_EVERY, and kLloydSyncEvery in the CUDA loop): the iterations that run after the last
    group has stopped must leave labels, distances, centers and n_iter as they were. Uniform points
    (no cluster structure) make the groups stop at different iterations (5 to 16), all well before
    max_iter; with tol = 1e-2 they stop by their center shift while their labels still change."""
    name, dev = backend
    if name == "triton" and dev.type == "cpu":
        pytest.skip("the loop is the same Python for every backend; under the interpreter it takes a minute")
    k, sizes = 5, [300, 200, 250, 150]
    g = _gen(22)
    x = torch.rand(sum(sizes), 2, generator=g).to(dev)
    offsets = torch.tensor([0] + sizes).cumsum(0)
    centers = x[torch.cat([int(offsets[i]) + torch.randperm(n, generator=g)[:k] for i, n in enumerate(sizes)]).to(dev)]
    want = lloyd_groups_stepwise(x, offsets, centers, 60, tol, 0, kmeans_assign_op, kmeans_update_op, sync_every=1)
    assert int(want[3].max()) < 60 and len(set(want[3].tolist())) > 1  # early, unequal stops
    for sync_every in (3, 4, 7):
        got = lloyd_groups_stepwise(x, offsets, centers, 60, tol, 0, kmeans_assign_op, kmeans_update_op,
                                    sync_every=sync_every)
        assert torch.equal(got[0], want[0]) and torch.equal(got[3], want[3]), sync_every
        assert torch.equal(got[2], want[2]) and torch.equal(got[1], want[1]), sync_every
    if lloyd_groups_runs_here(x.device) and dev.type == "cuda":  # the extension's loop
        ext = kmeans_lloyd_groups_op(x, offsets, centers, 60, tol, 0)
        assert torch.equal(ext[0], want[0]) and torch.equal(ext[3], want[3])
        torch.testing.assert_close(ext[2], want[2], rtol=1e-6, atol=1e-6)


def test_empty_cluster_keeps_its_center(backend):
    _, dev = backend
    x, offsets = _grouped_points([50, 50], 4, device=dev, seed=7)
    centers = _initial_centers(x, offsets, 3, seed=8)
    centers[1] = 1e4  # no row is ever nearest to it
    labels, _, cen, _ = _run(x, offsets, centers, 20, 0.0)
    assert not (labels.cpu() == 1).any()
    assert torch.equal(cen[1].cpu(), centers[1].cpu())


def test_result_does_not_depend_on_thread_count():
    x, offsets = _grouped_points([500, 300, 401, 77, 260], 24, seed=9)
    centers = _initial_centers(x, offsets, 4, seed=10)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(kmeans_lloyd_groups_op(x, offsets, centers, 40, 1e-4, 0))
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other))


def test_offset_data_keeps_nearest_labels():
    """Far from the origin the directions form still picks the float64 nearest center."""
    x, offsets = _grouped_points([400, 300], 64, seed=11, spread=0.5)
    x = x + 1000.0
    centers = _initial_centers(x, offsets, 4, seed=12)
    labels, _, cen, _ = kmeans_lloyd_groups_op(x, offsets, centers, 10, 0.0, 0)
    d = (x.double()[:, None, :] - cen.double()[None]).square().sum(-1)
    own = torch.repeat_interleave(torch.arange(2), torch.tensor([400, 300]))
    d = d.masked_fill((torch.arange(8)[None, :] // 4) != own[:, None], float("inf"))
    got = d.gather(1, labels[:, None])[:, 0]
    assert ((got - d.min(1).values) <= 1e-5 * got).all()


@pytest.mark.parametrize("k", [3, 10])
def test_exact_ties_go_to_the_lower_center(backend, k):
    """Points exactly halfway between two centers of their group take the lower index.

    k = 3 takes the CPU kernel's directions form, k = 10 its explicit differences; with
    max_iter = 0 the labels are those of the initial centers.
    """
    _, dev = backend
    line = torch.stack([torch.arange(2 * k - 1, dtype=torch.float32), torch.zeros(2 * k - 1)], 1)
    centers_g = line[::2]  # (0, 0), (2, 0), ...: the odd points are halfway between two of them
    x = torch.cat([line + 100.0, line - 50.0]).to(dev)  # two groups, the same layout shifted
    offsets = torch.tensor([0, 2 * k - 1, 4 * k - 2])
    centers = torch.cat([centers_g + 100.0, centers_g - 50.0]).to(dev)
    labels, _, _, _ = _run(x, offsets, centers, 0, 0.0)
    local = torch.arange(2 * k - 1) // 2  # point 2j and the halfway point 2j + 1 -> center j
    assert torch.equal(labels.cpu(), torch.cat([local, local + k]))


@pytest.mark.parametrize("dtype", [torch.float64, "low"])
def test_dtypes(backend, dtype):
    name, dev = backend
    dtypes = low_precision_dtypes(name, dev) if dtype == "low" else [dtype]
    for dt in dtypes:
        x, offsets = _grouped_points([40, 50], 6, device=dev, seed=13)
        x = x.to(dt)
        centers = _initial_centers(x, offsets, 2, seed=14)
        labels, sq, cen, _ = _run(x, offsets, centers, 20, 0.0)
        want_dtype = torch.float64 if dt == torch.float64 else torch.float32
        assert sq.dtype == want_dtype and cen.dtype == want_dtype
        torch.testing.assert_close(sq.double().cpu(), _f64_sqdist_own(x, cen, labels), rtol=1e-5, atol=1e-4)


def test_bad_inputs():
    x, offsets = _grouped_points([10, 10], 3, seed=15)
    c = _initial_centers(x, offsets, 2, seed=16)
    with pytest.raises(RuntimeError, match="fewer than k rows"):
        kmeans_lloyd_groups_op(x, torch.tensor([0, 1, 20]), c, 5, 0.0, 0)
    with pytest.raises(RuntimeError, match="k rows per group"):
        kmeans_lloyd_groups_op(x, offsets, c[:3], 5, 0.0, 0)
    with pytest.raises(RuntimeError, match="from 0 to N"):
        kmeans_lloyd_groups_op(x, torch.tensor([0, 10, 19]), c, 5, 0.0, 0)


def test_opcheck():
    x, offsets = _grouped_points([12, 9], 5, seed=17)
    c = _initial_centers(x, offsets, 3, seed=18)
    torch.library.opcheck(kmeans_lloyd_groups_op, (x, offsets, c, 10, 1e-4, 0))
    torch.library.opcheck(kmeans_lloyd_groups_op, (x.double(), offsets, c.double(), 10, 0.0, 0))


@pytest.mark.parametrize("name", ["reference", "cpu"])
@pytest.mark.parametrize("k,trials", [(1, 1), (3, 3), (4, 1)])
def test_fit_groups_equals_seeding_then_lloyd(name, k, trials):
    """kmeans_fit_groups (seeding + Lloyd per group in cache) = kmeans_plusplus + kmeans_lloyd_groups."""
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} not available")
    sizes = [s + k for s in SIZES]
    x, offsets = _grouped_points(sizes, 11, seed=19)
    with clustr_fast.use_backend(name):
        first, draws = plusplus_draws(offsets.diff(), k, trials, _gen(20), "cpu")
        got = kmeans_fit_groups_op(x, offsets, k, first + offsets[:-1], draws, 25, 1e-4, 0)
        idx = plusplus_segments(x, offsets, k, generator=_gen(20), n_local_trials=trials)
        want = kmeans_lloyd_groups_op(x, offsets, x[idx.reshape(-1)], 25, 1e-4, 0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[3], want[3])
    assert torch.equal(got[2], want[2]) and torch.equal(got[1], want[1])


def test_fit_groups_opcheck():
    x, offsets = _grouped_points([12, 9], 5, seed=21)
    first, draws = plusplus_draws(offsets.diff(), 3, 2, _gen(22), "cpu")
    torch.library.opcheck(kmeans_fit_groups_op, (x, offsets, 3, first + offsets[:-1], draws, 10, 1e-4, 0))


def test_group_tolerances_are_per_group_variances():
    x, offsets = _grouped_points([30, 1, 45, 2], 7, seed=23)
    got = group_tolerances(x, offsets, 1e-3)
    for g in range(4):
        rows = x[int(offsets[g]):int(offsets[g + 1])].double()
        want = rows.var(0, unbiased=False).mean() * 1e-3 if rows.shape[0] >= 2 else torch.tensor(0.0, dtype=torch.float64)
        torch.testing.assert_close(got[g], want, rtol=1e-5, atol=0.0)
    assert torch.equal(group_tolerances(x, offsets, 0.0), torch.zeros(4, dtype=torch.float64))


def test_a_group_stopped_by_its_tolerance_keeps_its_centers(backend):
    """Group 0 stops after one iteration by its tolerance although a label changed (the point at
    0.02 moves from the left center to the right one), while group 1 goes on: group 0's centers
    must stay those of its last iteration, as when it runs alone."""
    _, dev = backend
    left = torch.tensor([[-10.0, 0.0]]).repeat(400, 1)
    right = torch.tensor([[10.0, 0.0]]).repeat(20, 1)
    a = torch.cat([left, right, torch.tensor([[0.02, 0.0]])])
    b, _ = _grouped_points([50], 2, seed=10)
    x = torch.cat([a, b]).to(dev)
    offsets = torch.tensor([0, 421, 471])
    centers = torch.cat([torch.tensor([[-10.0, 0.0], [10.05, 0.0]]), _initial_centers(b, torch.tensor([0, 50]), 2, 11)])
    tol = 1e-3
    labels, _, cen, n_iter = _run(x, offsets, centers.to(dev), 30, tol)
    assert int(n_iter[0]) == 1 and int(n_iter[1]) > 1 and int(labels[420]) == 1
    for grp, (r0, r1) in enumerate(((0, 421), (421, 471))):
        lab1, _, cen1, it1 = _run(x[r0:r1], torch.tensor([0, r1 - r0]), centers[2 * grp:2 * grp + 2].to(dev), 30, tol)
        assert torch.equal(labels[r0:r1].cpu() - 2 * grp, lab1.cpu()) and int(n_iter[grp]) == int(it1[0])
        torch.testing.assert_close(cen[2 * grp:2 * grp + 2].cpu(), cen1.cpu(), rtol=1e-6, atol=1e-6)


def _inertia_per_group(x, groups, labels, centers, num_groups):
    own = (x.double() - centers.double()[labels]).square().sum(1)
    return torch.zeros(num_groups, dtype=torch.float64).index_add_(0, groups, own)


@pytest.mark.parametrize("in_order", [True, False])
def test_n_init_keeps_the_best_seeding_of_each_group(backend, in_order):
    """n_init seedings in one call = per group, the lowest-inertia fit among n_init calls with n_init=1
    drawing from the same generator one after the other (same labels, same centers)."""
    _, dev = backend
    k, n_init, sizes = 4, 4, [60, 9, 75, 40]
    x = torch.rand(sum(sizes), 3, generator=_gen(3)).to(dev)    # no cluster structure: many local optima
    groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(dev)
    if not in_order:
        perm = torch.randperm(x.shape[0], generator=_gen(4)).to(dev)
        x, groups = x[perm], groups[perm]
    labels, centers = clustr_fast.kmeans_per_group(x, groups, k, max_iter=20, generator=_gen(5), n_init=n_init)
    gen = _gen(5)
    runs = [clustr_fast.kmeans_per_group(x, groups, k, max_iter=20, generator=gen) for _ in range(n_init)]
    inertia = torch.stack([_inertia_per_group(x.cpu(), groups.cpu(), lab.cpu(), cen.cpu(), len(sizes))
                           for lab, cen in runs])                               # [n_init, G]
    best = inertia.argmin(0)
    assert bool((best > 0).any()), "some group should keep a later seeding"
    for g in range(len(sizes)):
        lab_b, cen_b = runs[int(best[g])]
        rows = (groups == g)
        assert torch.equal(labels[rows], lab_b[rows])
        # a copy's center sums may run in another order than the lone fit's (GPU atomics, tiling)
        torch.testing.assert_close(centers[g * k:(g + 1) * k].cpu(), cen_b[g * k:(g + 1) * k].cpu(),
                                   rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_inertia_per_group(x.cpu(), groups.cpu(), labels.cpu(), centers.cpu(), len(sizes)),
                               inertia.min(0).values)


def test_n_init_one_is_the_single_fit(backend):
    _, dev = backend
    x, offsets = _grouped_points(SIZES, 4, device=dev, seed=6)
    groups = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES)).to(dev)
    a = clustr_fast.kmeans_per_group(x, groups, 3, generator=_gen(7))
    b = clustr_fast.kmeans_per_group(x, groups, 3, generator=_gen(7), n_init=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="n_init"):
        clustr_fast.kmeans_per_group(x, groups, 3, n_init=0)
