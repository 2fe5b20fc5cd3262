"""clustr_fast.KMeans as a drop-in for sklearn.cluster.KMeans: scikit-learn's estimator checks, its
results from the same initial centers, weights, input and output kinds, meta-estimators."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from clustr_fast import estimator as est_mod
from clustr_fast.estimator import KMeans
from clustr_fast.ops.kmeans import plusplus_random_state

# The data of scikit-learn's sklearn/cluster/tests/test_k_means.py: non-centered blobs.
SK_CENTERS = np.array([[0.0, 5.0, 0.0, 0.0, 0.0], [1.0, 1.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 5.0, 1.0]])
SK_X, _ = make_blobs(n_samples=100, centers=SK_CENTERS, cluster_std=1.0, random_state=42)
# The data of the brief's example (centered first blob).
BLOB_CENTERS = np.array([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 5.0, 1.0]])
BLOB_X, _ = make_blobs(n_samples=100, centers=BLOB_CENTERS, cluster_std=1.0, random_state=42)

# check_sample_weight_equivalence_on_dense_data fits with integer weights and with repeated rows
# from k-means++: the same random numbers then pick other rows (the row indices differ), so the
# two fits start elsewhere and may end in different local optima. scikit-learn's own KMeans is
# marked the same way; from the same initial centers weights equal repetition
# (test_weights_equal_repeated_rows below).
EXPECTED_FAILED = {
    "check_sample_weight_equivalence_on_dense_data":
        "k-means++ maps the same random numbers to other rows when rows are repeated, so the fits start "
        "from other centers (as scikit-learn's KMeans); from the same centers weights equal repetition",
}


@parametrize_with_checks([KMeans()], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # checks with duplicate points
        check(estimator)


# --------------------------------------------------------------------------- same results as scikit-learn


def _datasets():
    rnd = np.random.RandomState(0)
    digits = load_digits().data[:600]
    return {
        "sk_blobs": (SK_X, 3, [SK_CENTERS, SK_X[:3], SK_X[[5, 50, 95]]]),
        "blobs": (BLOB_X, 3, [BLOB_CENTERS, BLOB_X[:3]]),
        "normal": (rnd.normal(size=(2000, 10)), 5, [rnd.normal(size=(5, 10))]),
        "digits": (digits, 10, [digits[:10]]),
        "toy": (np.array([[0, 0], [0.5, 0], [0.5, 1], [1, 1]]), 2, [np.array([[0, 0], [1, 1]]),
                                                                     np.array([[0.5, 0.5], [3, 3]])]),
        "line": (np.array([-10.0, -9.5, -9, -8.5, -8, -1, 1, 9, 9.5, 10])[:, None], 3,
                 [np.array([[-10.0], [-10], [-10]])]),
        "duplicates": (np.array([[0, 0], [1, 1], [1, 1], [1, 0], [0, 1]], float), 5,
                       [np.array([[0, 0], [1, 1], [1, 1], [1, 0], [0, 1]], float)]),
    }


def _weights(name, n):
    rnd = np.random.RandomState(1)
    return {"none": None, "uniform": rnd.uniform(0.5, 2.0, n), "integer": rnd.randint(1, 5, n).astype(float),
            "zeros": np.where(np.arange(n) % 3 == 0, 0.0, 1.0)}[name]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weights", ["none", "uniform", "integer", "zeros"])
@pytest.mark.parametrize("data", list(_datasets()))
def test_matches_sklearn_from_the_same_centers(data, weights, dtype):
    """From the same initial centers: the same labels, iterations and inertia (1e-6) as scikit-learn."""
    x, k, inits = _datasets()[data]
    if data == "duplicates" and weights in ("integer", "zeros"):
        pytest.skip("an empty cluster with nothing to relocate: see test_unrelocatable_empty_cluster")
    x = x.astype(dtype)
    sw = _weights(weights, x.shape[0])
    for init in inits:
        init = init.astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sk = SKKMeans(k, init=init, n_init=1).fit(x, sample_weight=sw)
            ours = KMeans(k, init=init, n_init=1).fit(x, sample_weight=sw)
        assert ours.n_iter_ == sk.n_iter_
        np.testing.assert_array_equal(ours.labels_, sk.labels_)
        # scikit-learn sums a float32 inertia in float32 (1.9.1: 1.5e-6 off on "normal" with zero
        # weights); ours is checked against the float64 sum of its own fit, and against scikit-learn's
        # at float32's accuracy
        w = np.ones(x.shape[0]) if sw is None else np.asarray(sw, dtype=np.float64)
        exact = float((w * ((x.astype(np.float64) - ours.cluster_centers_.astype(np.float64)[ours.labels_]) ** 2)
                       .sum(1)).sum())
        assert ours.inertia_ == pytest.approx(exact, rel=1e-6, abs=1e-12)
        assert ours.inertia_ == pytest.approx(sk.inertia_, rel=1e-6 if dtype == np.float64 else 1e-5, abs=1e-12)
        assert ours.cluster_centers_.dtype == x.dtype and ours.labels_.dtype == np.int32
        scale = np.abs(x).max()
        tol = 1e-12 if dtype == np.float64 else 2e-6
        np.testing.assert_allclose(ours.cluster_centers_, sk.cluster_centers_, rtol=0, atol=tol * scale)


def test_unrelocatable_empty_cluster():
    """Every point on its center and a cluster empty: it moves onto the center of the heaviest
    cluster. scikit-learn 1.9 means the same but, when the heaviest cluster has the higher index,
    copies its unnormalised weighted sum (a point far from the data); that is not reproduced."""
    x = np.array([[0, 0], [5, 5], [5, 5], [5, 5]], float)
    init = np.array([[0, 0], [0, 0], [5, 5]], float)
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):
        km = KMeans(3, init=init, n_init=1).fit(x)
        sk = SKKMeans(3, init=init, n_init=1).fit(x)
    np.testing.assert_allclose(km.cluster_centers_, [[0, 0], [5, 5], [5, 5]])
    np.testing.assert_allclose(sk.cluster_centers_, [[0, 0], [7.5, 7.5], [5, 5]])  # the sum of [5, 5] x 3, centered
    assert km.inertia_ == sk.inertia_ == 0.0 and km.n_iter_ == sk.n_iter_ == 2
    dup = np.array([[0, 0], [1, 1], [1, 1], [1, 0], [0, 1]], float)  # scikit-learn's test_relocating_with_duplicates
    with pytest.warns(ConvergenceWarning, match=r"Number of distinct clusters \(4\) found smaller than n_clusters \(5\)"):
        assert KMeans(5, init=dup).fit(dup).n_iter_ == 1


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_same_random_state_same_result_as_sklearn(init):
    """random_state feeds the same draws as scikit-learn's (first center, local trials, random rows)."""
    for rs in range(3):
        sk = SKKMeans(3, init=init, random_state=rs).fit(SK_X)
        ours = KMeans(3, init=init, random_state=rs).fit(SK_X)
        np.testing.assert_array_equal(ours.labels_, sk.labels_)
        assert ours.inertia_ == pytest.approx(sk.inertia_, rel=1e-9)
        assert ours.n_iter_ == sk.n_iter_


def test_weights_equal_repeated_rows():
    """Integer weights = repeated rows (scikit-learn's test_weighted_vs_repeated), in the kernels."""
    sw = np.random.RandomState(0).randint(1, 5, size=SK_X.shape[0])
    km = KMeans(3, init=SK_CENTERS, n_init=1)
    weighted = clone(km).fit(SK_X, sample_weight=sw)
    repeated = clone(km).fit(np.repeat(SK_X, sw, axis=0))
    np.testing.assert_array_equal(repeated.labels_, np.repeat(weighted.labels_, sw))
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-10)
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, atol=1e-12)
    assert weighted.n_iter_ == repeated.n_iter_


def test_unit_and_scaled_weights():
    sw = np.random.RandomState(2).uniform(size=SK_X.shape[0])
    none = KMeans(3, random_state=0).fit(SK_X)
    ones = KMeans(3, random_state=0).fit(SK_X, sample_weight=np.ones(SK_X.shape[0]))
    np.testing.assert_array_equal(none.labels_, ones.labels_)
    np.testing.assert_allclose(none.cluster_centers_, ones.cluster_centers_)
    a = KMeans(3, random_state=0).fit(SK_X, sample_weight=sw)
    b = KMeans(3, random_state=0).fit(SK_X, sample_weight=0.5 * sw)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_zero_weight_rows_are_never_initial_centers(init):
    x, _ = make_blobs(n_samples=100, n_features=5, centers=5, random_state=0)
    sw = np.random.RandomState(0).uniform(size=100)
    sw[::2] = 0
    for rs in range(5):
        km = KMeans(10, init=init, max_iter=1, random_state=rs)
        rows = plusplus_random_state(torch.from_numpy(x), 10, np.random.RandomState(rs), torch.from_numpy(sw)) \
            if init == "k-means++" else None
        if rows is not None:
            assert (rows % 2 == 1).all()
        km.fit(x, sample_weight=sw)  # runs; every initial center is a row of positive weight


def test_weighted_seeding_on_every_backend(backend):
    """Weighted greedy k-means++ (first row drawn by weight, D^2 draws times the weights) agrees
    on every backend with scikit-learn's algorithm on the same uniforms."""
    _, dev = backend
    x = torch.from_numpy(load_digits().data[:300]).to(dev)
    w = torch.from_numpy(np.random.RandomState(3).uniform(0.0, 2.0, 300)).to(dev)
    rows = plusplus_random_state(x, 8, np.random.RandomState(4), w)
    want = _np_weighted_plusplus(x.cpu().numpy(), 8, w.cpu().numpy(), np.random.RandomState(4))
    assert rows.cpu().tolist() == want


def _np_weighted_plusplus(x, k, w, rs):
    """scikit-learn's _kmeans_plusplus in float64 with explicit differences (side='right' draws)."""
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    idx = [int(rs.choice(n, p=w / w.sum()))]
    closest = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        cum = np.cumsum(w * closest)
        cand = np.minimum(np.searchsorted(cum, rs.uniform(size=trials) * cum[-1], side="right"), n - 1)
        dc = np.minimum(((x[None, :, :] - x[cand][:, None, :]) ** 2).sum(-1), closest)
        b = int(np.argmin(dc @ w))
        closest = dc[b]
        idx.append(int(cand[b]))
    return idx


# --------------------------------------------------------------------------- backends, kinds, dtypes


def test_fit_on_every_backend_with_weights(backend):
    _, dev = backend
    x = torch.from_numpy(SK_X).to(dev)
    sw = torch.from_numpy(_weights("uniform", 100)).to(dev)
    km = KMeans(3, init=SK_CENTERS, n_init=1).fit(x, sample_weight=sw)
    sk = SKKMeans(3, init=SK_CENTERS, n_init=1).fit(SK_X, sample_weight=sw.cpu().numpy())
    assert km.cluster_centers_.device == x.device and km.labels_.dtype == torch.int64
    np.testing.assert_array_equal(km.labels_.cpu().numpy(), sk.labels_)
    assert km.n_iter_ == sk.n_iter_ and km.inertia_ == pytest.approx(sk.inertia_, rel=1e-6)


def test_input_kinds_give_their_outputs(tmp_path):
    x32 = BLOB_X.astype(np.float32)
    ref = KMeans(3, random_state=0).fit(x32)
    assert isinstance(ref.cluster_centers_, np.ndarray) and ref.cluster_centers_.dtype == np.float32
    assert isinstance(ref.labels_, np.ndarray) and ref.labels_.dtype == np.int32
    assert ref.transform(x32).dtype == np.float32 and ref.predict(x32).dtype == np.int32
    lst = KMeans(3, random_state=0).fit(x32.tolist())
    assert lst.cluster_centers_.dtype == np.float64  # lists of floats are float64, as in scikit-learn
    np.testing.assert_array_equal(lst.labels_, ref.labels_)
    ints = KMeans(3, random_state=0).fit((x32 * 10).astype(np.int64))
    assert ints.cluster_centers_.dtype == np.float64
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x32.shape)
    mm[:] = x32
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    for copy_x in (True, False):
        km = KMeans(3, random_state=0, copy_x=copy_x).fit(ro)
        assert type(km.cluster_centers_) is np.ndarray
        np.testing.assert_array_equal(km.labels_, ref.labels_)
    t = torch.from_numpy(x32)
    kt = KMeans(3, random_state=0).fit(t)
    assert kt.cluster_centers_.dtype == torch.float32 and kt.labels_.dtype == torch.int64
    np.testing.assert_array_equal(kt.labels_.numpy(), ref.labels_)
    assert isinstance(kt.predict(x32), np.ndarray) and isinstance(ref.predict(t), torch.Tensor)
    assert isinstance(kt.transform(t), torch.Tensor) and kt.transform(t).dtype == torch.float32
    half = KMeans(3, random_state=0).fit(t.half())
    assert half.cluster_centers_.dtype == torch.float32


def test_pandas_in_numpy_out():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(BLOB_X, columns=[f"f{i}" for i in range(5)])
    km = KMeans(3, random_state=0).fit(df)
    assert isinstance(km.cluster_centers_, np.ndarray) and list(km.feature_names_in_) == list(df.columns)
    np.testing.assert_array_equal(km.labels_, KMeans(3, random_state=0).fit(BLOB_X).labels_)
    out = KMeans(3, random_state=0).set_output(transform="pandas").fit_transform(df)
    assert list(out.columns) == ["kmeans0", "kmeans1", "kmeans2"]


def test_copy_x_false_restores_the_data():
    x = BLOB_X.copy()
    KMeans(3, random_state=0, copy_x=False).fit(x)
    np.testing.assert_allclose(x, BLOB_X, atol=1e-12)
    t = torch.from_numpy(BLOB_X.copy())
    KMeans(3, random_state=0, copy_x=False).fit(t)
    np.testing.assert_allclose(t.numpy(), BLOB_X, atol=1e-12)
    t2 = torch.from_numpy(BLOB_X.copy())
    KMeans(3, random_state=0).fit(t2)
    assert torch.equal(t2, torch.from_numpy(BLOB_X))


@pytest.mark.gpu
def test_cuda_tensor_fits_on_the_gpu():
    x = torch.from_numpy(SK_X).cuda()
    km = KMeans(3, init=SK_CENTERS, n_init=1).fit(x, sample_weight=torch.ones(100, device="cuda", dtype=x.dtype))
    sk = SKKMeans(3, init=SK_CENTERS, n_init=1).fit(SK_X)
    assert km.cluster_centers_.is_cuda and km.labels_.is_cuda and km.predict(x).is_cuda
    np.testing.assert_array_equal(km.labels_.cpu().numpy(), sk.labels_)
    on_gpu = KMeans(3, init=SK_CENTERS, n_init=1, device="cuda").fit(SK_X)
    assert isinstance(on_gpu.cluster_centers_, np.ndarray) and on_gpu.n_iter_ == sk.n_iter_


# --------------------------------------------------------------------------- estimator API


def test_methods_and_attributes():
    import clustr_fast
    from clustr_fast import KMeans as exported
    assert clustr_fast.KMeans is KMeans and exported is KMeans and "KMeans" in clustr_fast.__all__
    km = KMeans(3, random_state=0)
    with pytest.raises(NotFittedError):
        km.predict(BLOB_X)
    labels = km.fit_predict(BLOB_X)
    np.testing.assert_array_equal(labels, km.labels_)
    np.testing.assert_array_equal(km.predict(BLOB_X), km.labels_)
    d = km.transform(BLOB_X)
    want = np.sqrt(((BLOB_X[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(d, want, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(km.fit_transform(BLOB_X), d, rtol=1e-7, atol=1e-7)
    assert km.score(BLOB_X) == pytest.approx(-km.inertia_, rel=1e-9)
    sw = _weights("uniform", 100)
    assert km.score(BLOB_X, sample_weight=sw) == pytest.approx(-(d.min(1) ** 2 * sw).sum(), rel=1e-9)
    assert km.n_features_in_ == 5 and km.n_iter_ >= 1
    assert list(km.get_feature_names_out()) == ["kmeans0", "kmeans1", "kmeans2"]
    assert km.set_output(transform="default") is km


def test_n_init_rule_and_best_run(monkeypatch):
    runs = []
    real = est_mod._lloyd

    def counting(*args, **kw):
        out = real(*args, **kw)
        runs.append(out[1])
        return out

    monkeypatch.setattr(est_mod, "_lloyd", counting)
    for init, want in (("k-means++", 1), ("random", 10), (lambda X, k, random_state: X[:k], 10), (SK_X[:3], 1)):
        runs.clear()
        km = KMeans(3, init=init, random_state=0).fit(SK_X)
        assert len(runs) == want
        assert km.inertia_ == min(runs)
    runs.clear()
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        KMeans(3, init=SK_X[:3], n_init=4).fit(SK_X)
    assert len(runs) == 1
    runs.clear()
    KMeans(3, n_init=4, random_state=0).fit(SK_X)
    assert len(runs) == 4


def test_elkan_runs_lloyd_and_verbose_prints(capsys):
    a = KMeans(3, random_state=0, algorithm="elkan", verbose=1).fit(SK_X)
    b = KMeans(3, random_state=0).fit(SK_X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    out = capsys.readouterr().out
    assert "Initialization complete" in out and "Iteration 0, inertia" in out and "Converged at iteration" in out


def test_seed_is_a_deprecated_alias_of_random_state():
    with pytest.warns(FutureWarning, match="random_state"):
        a = KMeans(3, seed=5).fit(SK_X)
    b = KMeans(3, random_state=5).fit(SK_X)
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_bad_parameters_and_inputs_name_the_argument():
    with pytest.raises(ValueError, match="n_clusters"):
        KMeans(0).fit(SK_X)
    with pytest.raises(ValueError, match="init"):
        KMeans(3, init="kmeans").fit(SK_X)
    with pytest.raises(ValueError, match="precision"):
        KMeans(3, precision="fast").fit(SK_X)
    with pytest.raises(ValueError, match="n_samples=100 should be >= n_clusters=101"):
        KMeans(101).fit(SK_X)
    with pytest.raises(ValueError, match="initial centers"):
        KMeans(3, init=SK_X[:2]).fit(SK_X)
    with pytest.raises(ValueError, match="sample_weight"):
        KMeans(3).fit(SK_X, sample_weight=np.ones(99))
    with pytest.raises(ValueError, match="sample_weight"):
        KMeans(3).fit(SK_X, sample_weight=-np.ones(100))
    with pytest.raises(ValueError, match="sample_weight"):
        KMeans(3).fit(SK_X, sample_weight=np.zeros(100))
    bad = torch.from_numpy(SK_X.copy())
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="`X` contains NaN or infinity"):
        KMeans(3).fit(bad)
    with pytest.raises(ValueError, match="2-D"):
        KMeans(3).fit(torch.zeros(5))
    km = KMeans(3).fit(SK_X)
    with pytest.raises(ValueError, match="features"):
        km.predict(torch.zeros(4, 2, dtype=torch.float64))


def test_pipeline_grid_search_and_clone():
    pipe = make_pipeline(StandardScaler(), KMeans(3, random_state=0))
    labels = pipe.fit_predict(SK_X)
    assert labels.shape == (100,) and set(labels.tolist()) == {0, 1, 2}
    assert pipe.transform(SK_X).shape == (100, 3)
    grid = GridSearchCV(KMeans(random_state=0), {"n_clusters": [2, 3, 4], "precision": ["highest", "high"]}, cv=3)
    grid.fit(SK_X)
    assert grid.best_params_["n_clusters"] in (2, 3, 4)
    km = KMeans(4, init="random", n_init=3, precision="high", n_local_trials=2, device="cpu")
    twin = clone(km)
    assert twin is not km and twin.get_params() == km.get_params()
