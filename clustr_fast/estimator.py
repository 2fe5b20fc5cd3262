"""``clustr_fast.KMeans``: scikit-learn's ``KMeans`` on the fused k-means ops (dense data).

A drop-in for ``sklearn.cluster.KMeans``: the same parameters, attributes, methods and
algorithm, run by the fused ops of :mod:`clustr_fast.ops.kmeans` on the CPU (one fused Lloyd
step per iteration), CUDA or Triton. One run (scikit-learn's ``_kmeans_single_lloyd``):

    centers c (k-means++, random rows, an array or a callable), the data centered on its mean
    for it = 1..max_iter:
        labels_i = argmin_j ||x_i - c_j||^2;   c'_j = sum_{labels_i = j} w_i x_i / sum_{labels_i = j} w_i
        an empty cluster (weight 0) takes the point farthest from its center (scikit-learn's
        relocation: that point leaves its cluster's mean)
        stop when the labels equal the previous iteration's (strict convergence), or when
        sum_j ||c'_j - c_j||^2 <= tol * mean_f var(x[:, f])
    without strict convergence the labels are recomputed for the final centers;
    inertia = sum_i w_i ||x_i - c_{labels_i}||^2.

The best of ``n_init`` runs (least inertia) is kept. Random numbers come from ``random_state``
as in scikit-learn (the same stream of draws: the first k-means++ center and the ``n_local_trials``
uniforms of each later step, the rows of ``init="random"``).

numpy arrays, lists, pandas frames and memmaps give numpy results (labels int32, centers in the
input's float dtype); torch tensors give torch tensors on the input's device (labels int64).
"""
from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Hidden, Interval, StrOptions
from sklearn.utils.validation import _is_arraylike_not_scalar, check_array, check_is_fitted, validate_data

from ._validate import PRECISIONS, check_weight_values, precision_code
from .kmeans import lloyd_step, tolerance
from .ops.kmeans import kmeans_assign_op, plusplus_random_state
from .ops.pairwise_sqdist import pairwise_sqdist

_OP = "KMeans"


# --------------------------------------------------------------------------- input and output


def _torch_input(X, name):
    """A torch tensor ``X`` as a 2-D float tensor (integers and bools -> float64, half -> float32)."""
    if X.dim() != 2:
        raise ValueError(f"{_OP}: `{name}` must be 2-D, got shape {tuple(X.shape)}")
    if X.is_complex():
        raise ValueError(f"{_OP}: `{name}`: complex data is not supported")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{_OP}: `{name}` has shape {tuple(X.shape)}; at least one row and one column are required")
    x = X.detach()
    if not x.dtype.is_floating_point:
        x = x.to(torch.float64)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    lo, hi = torch.aminmax(x)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError(f"{_OP}: `{name}` contains NaN or infinity")
    return x


def _from_numpy(a):
    """``torch.from_numpy`` that also takes read-only arrays (memmaps), which are then only read."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable"
        return torch.from_numpy(a)


def _np_dtype(x):
    return np.float64 if x.dtype == torch.float64 else np.float32


class _Data:
    """The validated input of one call.

    ``x``: float32/float64, C-contiguous, on the compute device (``device``, else the input's).
    ``shared``: ``x`` is the caller's own memory (``copy=False`` and nothing converted), which a
    fit centers in place and restores (``write``: a read-only array is copied instead). ``out``
    turns a result back into the caller's kind.
    """

    def __init__(self, est, X, *, reset, copy=False, write=False):
        device = None if est.device is None else torch.device(est.device)
        self.torch = isinstance(X, torch.Tensor)
        if self.torch:
            validate_data(est, X, skip_check_array=True, reset=reset)  # n_features_in_, feature names
            self.out_device = X.device
            x = _torch_input(X, "X").to(device or X.device).contiguous()
            shared = x.data_ptr() == X.data_ptr()
        else:
            a = validate_data(est, X, accept_sparse=False, dtype=[np.float64, np.float32], order="C", copy=copy,
                              reset=reset)
            self.out_device = None
            x = _from_numpy(a).to(device or "cpu")
            shared = x.device.type == "cpu" and not copy
            if write and shared and not a.flags.writeable:
                x, shared = x.clone(), False  # a read-only array is never written, even with copy_x=False
        if copy and shared:
            x, shared = x.clone(), False
        self.x, self.shared = x, shared

    def out(self, t, *, labels=False):
        """``t`` as the caller's kind: a tensor on the input's device, or a numpy array (labels int32)."""
        if self.torch:
            return t.to(self.out_device)
        t = t.cpu()
        return (t.to(torch.int32) if labels else t).numpy()


def _weights(sample_weight, data):
    """Validated ``sample_weight`` (a scalar or [N], >= 0, not all 0) in x's dtype and device; None: unit weights."""
    if sample_weight is None:
        return None
    x = data.x
    n = x.shape[0]
    if isinstance(sample_weight, torch.Tensor):
        w = sample_weight.detach()
        if w.is_complex() or not (w.dtype.is_floating_point or w.dtype in (torch.int8, torch.int16, torch.int32,
                                                                            torch.int64, torch.uint8)):
            raise ValueError(f"{_OP}: `sample_weight` must be real numbers, got {w.dtype}")
    else:
        w = torch.from_numpy(np.array(check_array(sample_weight, ensure_2d=False, dtype=_np_dtype(x),
                                                  input_name="sample_weight", ensure_all_finite=False)))
    if w.dim() == 0:
        w = w.expand(n)
    if w.dim() != 1 or w.shape[0] != n:
        raise ValueError(f"{_OP}: `sample_weight` must be a scalar or have shape ({n},), got {tuple(w.shape)}")
    w = w.to(device=x.device, dtype=x.dtype).contiguous()
    check_weight_values(w, op=_OP)
    return w


# --------------------------------------------------------------------------- one run


def _inertia(x, w, centers, labels):
    """sum_i w_i ||x_i - c_{labels_i}||^2 by explicit differences, as float (rows in cache-sized chunks)."""
    parts = []
    step = 16384
    for i0 in range(0, x.shape[0], step):
        d = torch.index_select(centers, 0, labels[i0:i0 + step]).sub_(x[i0:i0 + step]).square_().sum(1)
        parts.append((d if w is None else d * w[i0:i0 + step]).sum(dtype=torch.float64))
    return float(torch.stack(parts).sum())


def _relocate_empty(x, w, old_centers, centers, weight, labels, empty):
    """scikit-learn's empty-cluster handling on the new centers (means) and cluster weights.

    ``_relocate_empty_clusters_dense``: the n empty clusters take the n points farthest from
    their (old) centers, in ``np.argpartition`` order; each such point leaves the weighted sum of
    its cluster. Nothing is relocated when every point sits on its center. A cluster still of
    weight 0 after that is placed on the center of the heaviest cluster (the first on ties), as
    scikit-learn's ``_average_centers`` means to (scikit-learn 1.9 copies that cluster's
    unnormalised sum instead when the heaviest cluster has the higher index; not reproduced).
    Rare: runs on the host. Returns ``(centers, weight)``.
    """
    xn = x.cpu().numpy()
    labn = labels.cpu().numpy()
    out = centers.cpu().numpy().astype(np.float64)
    wsum = weight.cpu().numpy().astype(np.float64)
    dist = ((xn - old_centers.cpu().numpy()[labn]) ** 2).sum(axis=1)
    if dist.max() > 0:
        wn = None if w is None else w.cpu().numpy()
        sums = {}
        for new, f in zip(empty, np.argpartition(dist, -len(empty))[:-len(empty) - 1:-1]):
            wf = 1.0 if wn is None else float(wn[f])
            old = int(labn[f])
            sums.setdefault(old, out[old] * wsum[old])
            sums[old] = sums[old] - xn[f] * wf
            wsum[old] -= wf
            out[new] = xn[f]
            wsum[new] = wf
        for j, total in sums.items():
            out[j] = total / wsum[j] if wsum[j] > 0 else total
    light = wsum <= 0
    if light.any():
        out[light] = out[int(np.argmax(wsum))]
    return torch.from_numpy(out).to(centers), torch.from_numpy(wsum).to(weight.device)


def _iteration_stats(empty, labels, labels_old, new_centers, centers):
    """(any empty cluster, any label changed, squared center shift) with one host read."""
    shift = (new_centers - centers).to(torch.float64).square().sum()
    if labels.device.type == "cpu":
        changed = labels_old is None or not torch.equal(labels, labels_old)
        return bool(empty.any()), changed, float(shift)
    changed = (labels != labels_old).any() if labels_old is not None else torch.ones((), device=labels.device)
    stats = torch.stack([empty.any().to(torch.float64), changed.to(torch.float64), shift]).tolist()
    return bool(stats[0]), bool(stats[1]), stats[2]


def _lloyd(x, w, centers, max_iter, tol, precision, verbose=0):
    """One k-means run from ``centers`` (scikit-learn's ``_kmeans_single_lloyd``).

    Returns ``(labels int64 [N], inertia float, centers [k,d], n_iter)``.
    """
    labels_old = None
    strict = False
    i = 0
    for i in range(max_iter):
        labels, _, new_centers, weight = lloyd_step(x, centers, weights=w, precision=precision)
        if verbose:
            print(f"Iteration {i}, inertia {_inertia(x, w, centers, labels)}.")
        empty = weight == 0
        has_empty, changed, shift = _iteration_stats(empty, labels, labels_old, new_centers, centers)
        if has_empty:
            new_centers, _ = _relocate_empty(x, w, centers, new_centers, weight, labels, empty.nonzero()[:, 0].tolist())
            shift = float((new_centers - centers).to(torch.float64).square().sum())
        centers = new_centers
        if not changed:
            if verbose:
                print(f"Converged at iteration {i}: strict convergence.")
            strict = True
            break
        if shift <= tol:
            if verbose:
                print(f"Converged at iteration {i}: center shift {shift} within tolerance {tol}.")
            break
        labels_old = labels
    if not strict:  # the labels of the final centers
        labels = kmeans_assign_op(x, centers, precision=precision, groups=None, group_k=0)[0]
    return labels, _inertia(x, w, centers, labels), centers, i + 1


def _same_clustering(a, b):
    """scikit-learn's ``_is_same_clustering``: every label of ``a`` maps to one label of ``b``."""
    pairs = torch.unique(a * (int(b.max()) + 1) + b)
    return pairs.numel() == torch.unique(a).numel()


# --------------------------------------------------------------------------- initialization


def _init_centers(est, x, w, init, rs, data_for_callable):
    k = est.n_clusters
    if isinstance(init, str) and init == "k-means++":
        return x[plusplus_random_state(x, k, rs, w, est.n_local_trials)]
    if isinstance(init, str) and init == "random":
        n = x.shape[0]
        p = np.ones(n, dtype=_np_dtype(x)) if w is None else w.cpu().numpy()
        rows = rs.choice(n, size=k, replace=False, p=p / p.sum())
        return x[torch.from_numpy(rows).to(x.device)]
    if isinstance(init, torch.Tensor):  # an array of centers (validated by fit)
        return init
    centers = init(data_for_callable, k, random_state=rs)
    if isinstance(centers, torch.Tensor):
        centers = centers.detach().to(device=x.device, dtype=x.dtype)
    else:
        centers = torch.from_numpy(check_array(centers, dtype=_np_dtype(x), order="C")).to(x.device)
    _check_center_shape(centers, k, x.shape[1])
    return centers.contiguous()


def _check_center_shape(centers, k, d):
    if centers.dim() != 2 or centers.shape[0] != k:
        raise ValueError(f"{_OP}: the shape of the initial centers {tuple(centers.shape)} does not match the "
                         f"number of clusters {k}")
    if centers.shape[1] != d:
        raise ValueError(f"{_OP}: the shape of the initial centers {tuple(centers.shape)} does not match the "
                         f"number of features of the data {d}")


# --------------------------------------------------------------------------- the estimator


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """K-means clustering, a drop-in for ``sklearn.cluster.KMeans`` on dense data.

    Parameters are scikit-learn's: ``n_clusters``, ``init`` ("k-means++", "random", an array
    [n_clusters, n_features] or a callable ``init(X, n_clusters, random_state=rs)``),
    ``n_init`` ("auto": 1 for "k-means++" and an array, 10 for "random" and a callable),
    ``max_iter``, ``tol`` (relative to the mean feature variance), ``verbose``,
    ``random_state``, ``copy_x`` and ``algorithm`` ("lloyd"; "elkan" is accepted and runs the
    same Lloyd iterations, which give the same result). Then clustr_fast's own: ``precision``
    of the assignment products (:func:`clustr_fast.kmeans_assign`; "highest" is float32-exact),
    ``n_local_trials`` of greedy k-means++ (None: ``2 + floor(ln k)``), and ``device`` where
    the fit runs (None: the input's; e.g. "cuda" also for numpy input). ``seed`` is a
    deprecated alias of ``random_state``.

    Attributes after ``fit``: ``cluster_centers_ [n_clusters, n_features]``, ``labels_ [N]``,
    ``inertia_`` (sum_i w_i ||x_i - c_{labels_i}||^2), ``n_iter_``, ``n_features_in_`` and,
    for input with string column names, ``feature_names_in_``. numpy-like input gives numpy
    results (labels int32); torch tensors give tensors on the input's device (labels int64).
    float32 stays float32; integers become float64; float16/bfloat16 tensors run in float32.
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions({"k-means++", "random"}), callable, "array-like"],
        "n_init": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
        "copy_x": ["boolean"],
        "algorithm": [StrOptions({"lloyd", "elkan"})],
        "precision": [StrOptions(set(PRECISIONS))],
        "n_local_trials": [Interval(Integral, 1, None, closed="left"), None],
        "device": [str, torch.device, None],
        "seed": [Hidden(StrOptions({"deprecated"})), "random_state"],
    }

    def __init__(self, n_clusters=8, *, init="k-means++", n_init="auto", max_iter=300, tol=1e-4, verbose=0,
                 random_state=None, copy_x=True, algorithm="lloyd", precision="highest", n_local_trials=None,
                 device=None, seed="deprecated"):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.precision = precision
        self.n_local_trials = n_local_trials
        self.device = device
        self.seed = seed

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------------ fit

    def _random_state(self):
        if isinstance(self.seed, str) and self.seed == "deprecated":
            return self.random_state
        warnings.warn("KMeans: `seed` is deprecated and will be removed; use `random_state`", FutureWarning,
                      stacklevel=3)
        return self.seed if self.random_state is None else self.random_state

    def _n_init_runs(self):
        array_init = _is_arraylike_not_scalar(self.init)
        if self.n_init == "auto":
            n = 1 if array_init or (isinstance(self.init, str) and self.init == "k-means++") else 10
        else:
            n = int(self.n_init)
        if array_init and n != 1:
            warnings.warn(f"Explicit initial center position passed: performing only one init in {_OP} instead "
                          f"of n_init={n}.", RuntimeWarning, stacklevel=3)
            n = 1
        return n

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Compute the k-means clustering of ``X [N, n_features]`` (``sample_weight [N]`` optional).

        ``sample_weight`` weighs every row in the means, the inertia and the k-means++ draws (also
        of the first center; not used by an array or callable ``init``). Returns self.
        """
        rs = check_random_state(self._random_state())
        data = _Data(self, X, reset=True, copy=self.copy_x, write=True)
        x = data.x
        n, d = x.shape
        if n < self.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")
        n_init = self._n_init_runs()
        w = _weights(sample_weight, data)
        precision = precision_code(self.precision)
        init = self.init
        if _is_arraylike_not_scalar(init):
            if isinstance(init, torch.Tensor):
                init = _torch_input(init, "init").to(device=x.device, dtype=x.dtype).clone()
            else:
                init = torch.from_numpy(check_array(init, dtype=_np_dtype(x), copy=True, order="C",
                                                    input_name="init")).to(x.device)
            _check_center_shape(init, self.n_clusters, d)
        tol = tolerance(x, self.tol)
        mean = x.mean(0)  # centered data: more accurate distances, as scikit-learn
        x.sub_(mean)
        if isinstance(init, torch.Tensor):
            init = init - mean
        for_callable = None
        if callable(init) and not isinstance(init, torch.Tensor):
            for_callable = x if data.torch else x.cpu().numpy()
        best = None
        for _ in range(n_init):
            centers = _init_centers(self, x, w, init, rs, for_callable)
            if self.verbose:
                print("Initialization complete")
            labels, inertia, centers, n_iter = _lloyd(x, w, centers.contiguous(), self.max_iter, tol, precision,
                                                      self.verbose)
            if best is None or (inertia < best[1] and not _same_clustering(labels, best[0])):
                best = labels, inertia, centers, n_iter
        labels, inertia, centers, n_iter = best
        if data.shared:  # copy_x=False: the caller's data back in place
            x.add_(mean)
        centers = centers + mean
        distinct = int(torch.unique(labels).numel())
        if distinct < self.n_clusters:
            warnings.warn(f"Number of distinct clusters ({distinct}) found smaller than n_clusters "
                          f"({self.n_clusters}). Possibly due to duplicate points in X.", ConvergenceWarning,
                          stacklevel=2)
        self.cluster_centers_ = data.out(centers)
        self.labels_ = data.out(labels, labels=True)
        self.inertia_ = inertia
        self.n_iter_ = n_iter
        self._n_features_out = self.cluster_centers_.shape[0]
        return self

    # ------------------------------------------------------------------ after fit

    def _test_data(self, X):
        check_is_fitted(self)
        data = _Data(self, X, reset=False)
        c = self.cluster_centers_
        c = c.detach() if isinstance(c, torch.Tensor) else torch.from_numpy(np.asarray(c))
        return data, c.to(device=data.x.device, dtype=data.x.dtype).contiguous()

    def predict(self, X):
        """Index of the nearest center of every row of ``X`` (``argmin_j ||x_i - c_j||^2``, ties to the lower)."""
        data, c = self._test_data(X)
        labels = kmeans_assign_op(data.x, c, precision=precision_code(self.precision), groups=None, group_k=0)[0]
        return data.out(labels, labels=True)

    def fit_predict(self, X, y=None, sample_weight=None):
        """``fit(X, sample_weight=sample_weight).labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X):
        """Distances to every center: ``out[i, j] = ||x_i - c_j||`` [N, n_clusters] (Euclidean, not squared)."""
        data, c = self._test_data(X)
        return data.out(pairwise_sqdist(data.x, c, precision=self.precision).sqrt_())

    def fit_transform(self, X, y=None, sample_weight=None):
        """``fit(X, sample_weight=sample_weight).transform(X)``."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None):
        """Opposite of the k-means objective on ``X``: ``-sum_i w_i min_j ||x_i - c_j||^2`` (a float)."""
        data, c = self._test_data(X)
        w = _weights(sample_weight, data)
        labels = kmeans_assign_op(data.x, c, precision=precision_code(self.precision), groups=None, group_k=0)[0]
        return -_inertia(data.x, w, c, labels)
