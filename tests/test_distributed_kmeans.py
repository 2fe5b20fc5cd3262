"""clustr_fast.distributed on real processes (Gloo, one thread each) against one process.

Every multi-rank case runs in a few spawned process groups (tests/_dist.py: file:// rendezvous,
a hard timeout, every process killed by pid at the end); the ranks send their results back and
the checks run here, against the single-process functions on the rank-ordered concatenation
of the shards, scikit-learn's KMeans, and a plain float64 Lloyd loop written below. Shards are
uneven and one rank holds no rows.
"""
import datetime
import math
import os
import tempfile
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

import clustr_fast
import clustr_fast.distributed as cfd

from _dist import run_ranks, values

SIZES_3 = [61, 0, 94]          # three ranks, uneven, one without rows
SIZES_2 = [1, 130]             # two ranks, one with a single row
CHI_SIZES = [2, 0, 4]          # the D^2-law test: 6 rows over three ranks
CHI_CALLS = 720


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _blobs(n, d=5, blobs=6, seed=0, dtype=torch.float64):
    """Blobs of unit spread around random means (spread 6): fresh random values, never zeros."""
    g = _gen(seed)
    means = 6.0 * torch.randn(blobs, d, generator=g, dtype=torch.float64)
    x = means[torch.randint(0, blobs, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return x.to(dtype)


def _noise(n, seed=9):
    """Gaussian rows without clusters: Lloyd takes several iterations, so `tol` decides when it stops."""
    return torch.randn(n, 5, generator=_gen(seed), dtype=torch.float64)


def _groups(n, G=4, seed=7):
    return torch.randint(0, G, (n,), generator=_gen(seed))


def _duplicates(n, seed=3):
    """Rows drawn from 4 distinct points: k-means++ with k > 4 reaches the uniform draw."""
    g = _gen(seed)
    pts = torch.randn(4, 3, generator=g, dtype=torch.float64)
    return pts[torch.randint(0, 4, (n,), generator=g)]


def _chi_points():
    """A slightly jittered hexagon: every D^2 probability of the second center is at least about 1/12."""
    ang = torch.arange(6, dtype=torch.float64) * (math.pi / 3)
    pts = 1.5 * torch.stack([ang.cos(), ang.sin()], 1) + torch.tensor([0.7, -0.4], dtype=torch.float64)
    return pts + 0.05 * torch.randn(6, 2, generator=_gen(21), dtype=torch.float64)


def _init_near(x, k, seed):
    """k rows of x moved a little: initial centers that leave no cluster empty."""
    g = _gen(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:k]] + 0.5 * torch.randn(k, x.shape[1], generator=g).to(x.dtype)


def _shard(t, sizes, rank):
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def _far_init(x, k, seed):
    """k rows of x as centers, the last moved far away: its cluster is empty at the first step."""
    c = x[torch.randperm(x.shape[0], generator=_gen(seed))[:k]].clone()
    c[-1] += 1000.0
    return c


# --------------------------------------------------------------------------- what each rank computes


def _scenarios(rank, world, sizes, chi):
    n = sum(sizes)
    x64 = _blobs(n, seed=1)
    x32 = _blobs(n, seed=2, dtype=torch.float32)
    xl64, xl32 = _shard(x64, sizes, rank), _shard(x32, sizes, rank)
    out = {}
    out["pp64"] = cfd.kmeans_plusplus(xl64, 9, generator=_gen(11))
    out["pp32"] = cfd.kmeans_plusplus(xl32, 9, generator=_gen(12))
    out["pp1"] = cfd.kmeans_plusplus(xl64, 5, generator=_gen(13), n_local_trials=1)
    out["ppdup"] = cfd.kmeans_plusplus(_shard(_duplicates(n), sizes, rank), 7, generator=_gen(14))
    out["km64"] = cfd.kmeans(xl64, 6, seed=2)
    out["km_tol"] = cfd.kmeans(_shard(_noise(n), sizes, rank), 6, seed=3, tol=0.05)
    out["km_strict"] = cfd.kmeans(_shard(_noise(n), sizes, rank), 6, seed=3, tol=0.0)
    out["init64"] = cfd.kmeans(xl64, 6, init=_init_near(x64, 6, 30), max_iter=100, tol=1e-4)
    out["init32"] = cfd.kmeans(xl32, 6, init=_init_near(x32, 6, 31), max_iter=100, tol=0.0)
    out["empty"] = cfd.kmeans(xl64, 5, init=_far_init(x64, 5, 4), max_iter=100)
    out["par"] = cfd.kmeans(xl64, 6, init="k-means||", seed=5)
    out["par_again"] = cfd.kmeans(xl64, 6, init="k-means||", seed=5)
    g = _groups(n)
    out["pg64"] = cfd.kmeans_per_group(xl64, _shard(g, sizes, rank), 3, seed=4)
    out["pg32"] = cfd.kmeans_per_group(xl32, _shard(g, sizes, rank), 2, seed=6, tol=0.0, max_iter=30)
    if chi:
        pts = _shard(_chi_points(), CHI_SIZES, rank)
        out["chi"] = [cfd.kmeans_plusplus(pts, 2, generator=_gen(1000 + s), n_local_trials=1)[1].tolist()
                      for s in range(CHI_CALLS)]
    return out


def _plain_lloyd(x, centers, max_iter, tol_rel):
    """scikit-learn's Lloyd run in float64 with plain loops of tensor ops (the independent oracle):
    assign, means, an empty cluster takes the row farthest from its center, stop on unchanged
    labels or a squared shift <= tol_rel * mean(var(x, 0)), else relabel to the final centers."""
    x, c = x.double(), centers.double().clone()
    tol = float(x.var(0, unbiased=False).mean()) * tol_rel
    old, strict = None, False
    for it in range(1, max_iter + 1):
        dist_ = ((x[:, None, :] - c[None]) ** 2).sum(2)
        lab = dist_.argmin(1)
        new = torch.zeros_like(c)
        cnt = torch.zeros(c.shape[0], dtype=torch.float64)
        for i in range(x.shape[0]):
            new[lab[i]] += x[i]
            cnt[lab[i]] += 1
        far = ((x - c[lab]) ** 2).sum(1)
        order = sorted(range(x.shape[0]), key=lambda i: (-float(far[i]), i))
        for e, i in zip((cnt == 0).nonzero().flatten().tolist(), order):
            new[lab[i]] -= x[i]
            cnt[lab[i]] -= 1
            new[e], cnt[e] = x[i], 1
        new = torch.where((cnt > 0)[:, None], new / cnt.clamp(min=1)[:, None], new)
        shift = float(((new - c) ** 2).sum())
        c = new
        if old is not None and torch.equal(lab, old):
            strict = True
            break
        if shift <= tol:
            break
        old = lab
    if not strict:
        lab = ((x[:, None, :] - c[None]) ** 2).sum(2).argmin(1)
    return c, lab, float(((x - c[lab]) ** 2).sum()), it


# --------------------------------------------------------------------------- checks in the parent


def _same_on_every_rank(vals, key, part=0):
    first = vals[0][key][part]
    for v in vals[1:]:
        assert torch.equal(v[key][part], first), f"{key}: ranks hold different values"
    return first


def _labels(vals, key, part):
    return torch.cat([v[key][part] for v in vals])


def _check_equalities(vals, sizes):
    n = sum(sizes)
    x64 = _blobs(n, seed=1)
    x32 = _blobs(n, seed=2, dtype=torch.float32)

    # k-means++: the same rows as one process with the same generator state
    for key, x, k, seed, trials in (("pp64", x64, 9, 11, None), ("pp32", x32, 9, 12, None),
                                    ("pp1", x64, 5, 13, 1), ("ppdup", _duplicates(n), 7, 14, None)):
        centers, idx = clustr_fast.kmeans_plusplus(x, k, generator=_gen(seed), n_local_trials=trials)
        got = _same_on_every_rank(vals, key, 1)
        assert torch.equal(got, idx), (key, got.tolist(), idx.tolist())
        assert torch.equal(_same_on_every_rank(vals, key, 0), centers)

    # Lloyd: clustr_fast.KMeans on the concatenation (same seed, same initial centers)
    for key, x, kw in (("km64", x64, dict(n_clusters=6, random_state=2)),
                       ("km_tol", _noise(n), dict(n_clusters=6, random_state=3, tol=0.05)),
                       ("km_strict", _noise(n), dict(n_clusters=6, random_state=3, tol=0.0)),
                       ("init64", x64, dict(n_clusters=6, init=_init_near(x64, 6, 30), max_iter=100, tol=1e-4)),
                       ("empty", x64, dict(n_clusters=5, init=_far_init(x64, 5, 4), max_iter=100))):
        est = clustr_fast.KMeans(n_init=1, **kw).fit(x)
        centers = _same_on_every_rank(vals, key)
        assert torch.equal(_labels(vals, key, 1), est.labels_), key
        assert torch.allclose(centers, est.cluster_centers_, rtol=0, atol=1e-10), key
        assert vals[0][key][3] == est.n_iter_, key
        assert math.isclose(vals[0][key][2], est.inertia_, rel_tol=1e-12), key
        assert all(v[key][2] == vals[0][key][2] and v[key][3] == vals[0][key][3] for v in vals)

    assert vals[0]["km_tol"][3] < vals[0]["km_strict"][3]          # the shift test stopped it earlier

    # the same runs against the plain float64 loop and scikit-learn
    from sklearn.cluster import KMeans as SkKMeans

    for key, init, iters, tol in (("init64", _init_near(x64, 6, 30), 100, 1e-4),
                                  ("empty", _far_init(x64, 5, 4), 100, 1e-4)):
        c, lab, inertia, it = _plain_lloyd(x64, init, iters, tol)
        assert torch.equal(_labels(vals, key, 1), lab), key
        assert torch.allclose(vals[0][key][0], c, rtol=0, atol=1e-10), key
        assert vals[0][key][3] == it and math.isclose(vals[0][key][2], inertia, rel_tol=1e-10), key
        sk = SkKMeans(init.shape[0], init=init.numpy(), n_init=1, max_iter=iters, tol=tol).fit(x64.numpy())
        assert np.array_equal(_labels(vals, key, 1).numpy(), sk.labels_), key
        assert np.allclose(vals[0][key][0].numpy(), sk.cluster_centers_, rtol=0, atol=1e-10), key
        assert vals[0][key][3] == sk.n_iter_, key

    # float32 from the same centers: labels equal, centers within 1e-5 relative
    init32 = _init_near(x32, 6, 31)
    est = clustr_fast.KMeans(6, init=init32, n_init=1, max_iter=100, tol=0.0).fit(x32)
    centers = _same_on_every_rank(vals, "init32")
    assert torch.equal(_labels(vals, "init32", 1), est.labels_)
    assert ((centers - est.cluster_centers_).abs() <= 1e-5 * est.cluster_centers_.abs().clamp(min=1)).all()
    assert vals[0]["init32"][3] == est.n_iter_

    # k-means||: deterministic, the same on every rank, as good as k-means++ after Lloyd on blobs
    par = _same_on_every_rank(vals, "par")
    assert torch.equal(par, vals[0]["par_again"][0])
    assert torch.equal(_labels(vals, "par", 1), _labels(vals, "par_again", 1))
    assert vals[0]["par"][2] <= 1.02 * vals[0]["km64"][2]

    # per-group refresh: clustr_fast.kmeans_per_group on the concatenation, same seed
    g = _groups(n)
    for key, x, k, seed, kw in (("pg64", x64, 3, 4, {}), ("pg32", x32, 2, 6, dict(tol=0.0, max_iter=30))):
        lab, centers = clustr_fast.kmeans_per_group(x, g, k, generator=_gen(seed), **kw)
        got = _same_on_every_rank(vals, key, 1)
        assert torch.equal(_labels(vals, key, 0), lab), key
        if x.dtype == torch.float64:
            assert torch.allclose(got, centers, rtol=0, atol=1e-10), key
        else:
            assert ((got - centers).abs() <= 1e-5 * centers.abs().clamp(min=1)).all(), key


def _chi_square(pairs):
    """Chi-square of the observed (first, second) k-means++ pairs against the D^2 law."""
    from scipy.stats import chi2

    pts = _chi_points()
    n = pts.shape[0]
    d2 = ((pts[:, None] - pts[None]) ** 2).sum(2)
    obs = np.zeros((n, n))
    for f, s in pairs:
        obs[f, s] += 1
    exp = np.array([[len(pairs) / n * float(d2[f, s] / d2[f].sum()) for s in range(n)] for f in range(n)])
    mask = ~np.eye(n, dtype=bool)
    o, e = obs[mask], exp[mask]
    assert obs[~mask].sum() == 0            # the second center is never the first
    assert e.min() >= 5, e.min()            # the chi-square approximation holds
    stat = float(((o - e) ** 2 / e).sum())
    return stat, float(chi2.sf(stat, o.size - 1))


def test_three_ranks_equal_one_process_and_follow_the_d2_law():
    vals = values(run_ranks(_scenarios, 3, SIZES_3, True, timeout=240))
    _check_equalities(vals, SIZES_3)
    pairs = vals[0]["chi"]
    assert all(v["chi"] == pairs for v in vals)
    stat, p = _chi_square(pairs)
    print(f"D^2 law over 3 ranks: chi-square {stat:.1f}, p = {p:.3f}")
    assert p > 1e-3


def test_two_ranks_equal_one_process():
    vals = values(run_ranks(_scenarios, 2, SIZES_2, False, timeout=180))
    _check_equalities(vals, SIZES_2)


# --------------------------------------------------------------------------- errors on every rank


def _errors(rank, world):
    out = {}

    def attempt(name, fn):
        try:
            fn()
            out[name] = None
        except Exception as err:  # noqa: BLE001
            out[name] = (type(err).__name__, str(err))

    x = _blobs(12, d=3, seed=40 + rank)
    attempt("d", lambda: cfd.kmeans(_blobs(12, d=3 + rank, seed=41), 2))
    attempt("k", lambda: cfd.kmeans_plusplus(x, 2 + rank, generator=_gen(0)))
    attempt("dtype", lambda: cfd.kmeans_per_group(x.to(torch.float64 if rank else torch.float32),
                                                  torch.zeros(12, dtype=torch.int64), 2))
    attempt("G", lambda: cfd.kmeans_per_group(x, torch.zeros(12, dtype=torch.int64), 2, num_groups=1 + rank))
    attempt("init", lambda: cfd.kmeans(x, 2, init=_blobs(2, d=3, seed=50 + rank)))
    bad = x.clone()
    if rank == 1:
        bad[3, 1] = float("nan")
    attempt("nan", lambda: cfd.kmeans(bad, 2))
    groups = torch.tensor([0] * 10 + [1] * 2)                     # group 1: 2 rows per rank, 4 in all
    attempt("small", lambda: cfd.kmeans_per_group(x, groups, 5))
    attempt("k>N", lambda: cfd.kmeans(x, 25))
    attempt("fine", lambda: cfd.kmeans(x, 2))                      # the group still works after them
    # a rank that raises mid-fit and stays alive: the other fails at the group's timeout
    short = dist.new_group(ranks=list(range(world)), timeout=datetime.timedelta(seconds=3))
    real_step = cfd.kmeans.__globals__["local_step"]
    calls = [0]

    def failing_step(*args):
        calls[0] += 1
        if rank == 1 and calls[0] == 2:
            raise RuntimeError("simulated failure inside Lloyd")
        return real_step(*args)

    cfd.kmeans.__globals__["local_step"] = failing_step
    t0 = time.monotonic()
    attempt("midfit", lambda: cfd.kmeans(_blobs(200, seed=60 + rank), 4, init=_blobs(4, seed=61), tol=0.0,
                                         group=short))
    out["midfit_seconds"] = time.monotonic() - t0
    cfd.kmeans.__globals__["local_step"] = real_step
    if rank == 1:
        time.sleep(5)   # stays alive past rank 0's timeout
    return out


def test_bad_input_raises_on_every_rank_and_a_failing_rank_stops_the_others():
    vals = values(run_ranks(_errors, 2, timeout=150))
    for r, v in enumerate(vals):
        assert v["d"][0] == "ValueError" and "`x.shape[1]`" in v["d"][1] and "rank 1 has 4" in v["d"][1]
        assert v["k"][0] == "ValueError" and "`k`" in v["k"][1] and "rank 1 has 3" in v["k"][1]
        assert v["dtype"][0] == "ValueError" and "`x.dtype`" in v["dtype"][1] and "torch.float64" in v["dtype"][1]
        assert v["G"][0] == "ValueError" and "`num_groups`" in v["G"][1]
        assert v["init"][0] == "ValueError" and "`init (the centers' values)`" in v["init"][1]
        assert v["small"][0] == "ValueError" and "group 1 has 4 rows over all ranks, fewer than `k`=5" in v["small"][1]
        assert v["k>N"][0] == "ValueError" and "24 rows of `x` over all ranks" in v["k>N"][1]
        assert v["fine"] is None
    assert vals[1]["nan"][0] == "ValueError" and "non-finite" in vals[1]["nan"][1]
    assert vals[0]["nan"][0] == "ValueError" and "rank 1 rejected its input" in vals[0]["nan"][1]
    assert vals[1]["midfit"] == ("RuntimeError", "simulated failure inside Lloyd")
    assert vals[0]["midfit"][0] == "DistributedError", vals[0]["midfit"]
    assert "Lloyd sums (iteration" in vals[0]["midfit"][1] and "rank 0 of 2" in vals[0]["midfit"][1]
    assert vals[0]["midfit_seconds"] < 30


def _dies_mid_fit(rank, world):
    if rank == 1:
        cfd.kmeans.__globals__["local_step"] = _raise_on_second_call()
    try:
        cfd.kmeans(_blobs(200, seed=70 + rank), 4, init=_blobs(4, seed=71), tol=0.0)
    except cfd.DistributedError as err:
        return ("DistributedError", str(err))


def _raise_on_second_call():
    real = cfd.kmeans.__globals__["local_step"]
    calls = [0]

    def assign(*args):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("simulated failure inside Lloyd")
        return real(*args)
    return assign


def test_a_rank_that_exits_mid_fit_stops_the_others():
    t0 = time.monotonic()
    res = run_ranks(_dies_mid_fit, 2, timeout=120, gloo_timeout=60)
    assert res[1].error_type == "RuntimeError" and "simulated failure" in res[1].error
    assert res[0].ok and res[0].value[0] == "DistributedError", res[0]
    assert "Lloyd sums (iteration" in res[0].value[1]
    assert time.monotonic() - t0 < 100


# --------------------------------------------------------------------------- one process


def _world_one_checks():
    x = _blobs(150, seed=80)
    g = _groups(150, G=3)
    c, i = cfd.kmeans_plusplus(x, 5, generator=_gen(1))
    c1, i1 = clustr_fast.kmeans_plusplus(x, 5, generator=_gen(1))
    assert torch.equal(i, i1) and torch.equal(c, c1)
    r = cfd.kmeans(x, 5, seed=2)
    est = clustr_fast.KMeans(5, random_state=2).fit(x)
    assert torch.equal(r[0], est.cluster_centers_) and torch.equal(r[1], est.labels_)
    assert r[2] == est.inertia_ and r[3] == est.n_iter_
    lab, cen = cfd.kmeans_per_group(x, g, 2, seed=3)
    lab1, cen1 = clustr_fast.kmeans_per_group(x, g, 2, generator=_gen(3))
    assert torch.equal(lab, lab1) and torch.equal(cen, cen1)
    a, b = cfd.kmeans(x, 5, init="k-means||", seed=4), cfd.kmeans(x, 5, init="k-means||", seed=4)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]


def test_one_process_is_the_single_process_function():
    assert not dist.is_initialized()
    _world_one_checks()
    with pytest.raises(RuntimeError, match="`group` was given but torch.distributed has no initialised"):
        cfd.kmeans(_blobs(20), 2, group=object())
    with pytest.raises(RuntimeError, match="no initialised process group"):
        cfd.kmeans_per_group(_blobs(20), _groups(20, G=2), 2, group=object())


def test_a_group_of_one_rank_is_the_single_process_function():
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(tmp, "rdzv"), rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=30))
        try:
            _world_one_checks()
        finally:
            dist.destroy_process_group()
