"""k-means: fused assign, Lloyd iteration, k-means++ seeding, KMeans and the per-class refresh.

Providers beyond the standard ones are separate cases with provider ``reference``
and a label suffix (as ``,cdist`` in bench_pairwise_sqdist): ``,sklearn``
(scikit-learn's KMeans, same init count and iterations) and ``,faiss``
(faiss.Kmeans, only when faiss-cpu is installed; on all the points: by default it trains on a
sample of 256 points per centroid, 16,384 of the 50,000 here).
"""
import numpy as np
import pytest
import torch

import clustr_fast
from clustr_fast import reference
from common import Case, randn
from conftest import bench_params
from shapes import KMEANS_ASSIGN_GPU, KMEANS_CPU, KMEANS_LLOYD_GPU, KMEANS_REFRESH

try:
    import faiss  # noqa: F401
    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False

OURS = ("cpu", "triton", "cuda")


def _points(n, k, d):
    def make(dev):
        return dict(x=randn(n, d, device=dev, seed=0), c=randn(k, d, device=dev, seed=1), k=k)
    return make


def _assign(precision):
    def run(provider, t):
        if provider == "reference":
            return reference.kmeans_assign(t["x"], t["c"])
        return clustr_fast.kmeans_assign(t["x"], t["c"], precision=precision)
    return run


def _lloyd(precision):
    def run(provider, t):
        labels, _ = clustr_fast.kmeans_assign(t["x"], t["c"], precision=precision)
        return clustr_fast.kmeans_update(t["x"], labels, t["k"], prev_centers=t["c"])
    return run


def _seed(provider, t):
    gen = torch.Generator(t["x"].device).manual_seed(0)
    if provider == "reference":
        return reference.kmeans_plusplus(t["x"], t["k"], generator=gen)
    return clustr_fast.kmeans_plusplus(t["x"], t["k"], generator=gen)


# ---- KMeans (CPU target: >= 3x scikit-learn, with and without sample weights)


def _kmeans_make(n, d, k):
    def make(dev):
        x = randn(n, d, device=dev, seed=0)
        w = np.random.RandomState(0).uniform(0.5, 2.0, n).astype(np.float32)
        return dict(x=x, k=k, xn=randn(n, d, device="cpu", seed=0).numpy(), wn=w, w=torch.from_numpy(w).to(dev))
    return make


def _kmeans(iters, weighted=False):
    def run(provider, t):
        w = t["w"] if weighted else None
        km = clustr_fast.KMeans(t["k"], max_iter=iters, tol=0.0, random_state=0)
        if provider == "reference":
            with clustr_fast.use_backend("reference"):
                return km.fit(t["x"], sample_weight=w)
        return km.fit(t["x"], sample_weight=w)
    return run


def _sklearn_kmeans(iters, weighted=False):
    def run(provider, t):
        from sklearn.cluster import KMeans
        return KMeans(t["k"], n_init=1, max_iter=iters, tol=0.0, random_state=0).fit(
            t["xn"], sample_weight=t["wn"] if weighted else None)
    return run


def _faiss_kmeans(iters):
    def run(provider, t):
        n, d = t["xn"].shape
        km = faiss.Kmeans(d, t["k"], niter=iters, seed=0, max_points_per_centroid=n)  # every point, as ours
        km.train(t["xn"])
        return km
    return run


# ---- per-class refresh (ClusTR): G classes x n rows, k clusters each, k-means++ + `iters` iterations


def _refresh_make(groups, per_group, d, k):
    def make(dev):
        x = randn(groups * per_group, d, device=dev, seed=0)
        g = torch.arange(groups, device=dev).repeat_interleave(per_group)
        return dict(x=x, groups=g, k=k, xn=x.cpu().numpy(), gn=g.cpu().numpy(), G=groups)
    return make


def _refresh(iters):
    def run(provider, t):
        if provider == "reference":  # the former per-class Python loop over the reference ops
            out = []
            for g in range(t["G"]):
                xg = t["x"][t["groups"] == g]
                c, _ = reference.kmeans_plusplus(xg, t["k"], generator=torch.Generator(xg.device).manual_seed(g))
                for _ in range(iters):
                    lab, _ = reference.kmeans_assign(xg, c)
                    c, _ = reference.kmeans_update(xg, lab, t["k"], prev_centers=c)
                out.append(c)
            return torch.cat(out)
        return clustr_fast.kmeans_per_group(t["x"], t["groups"], t["k"], max_iter=iters, tol=0.0,
                                            generator=torch.Generator(t["x"].device).manual_seed(0))
    return run


def _sklearn_refresh(iters):
    def run(provider, t):
        from sklearn.cluster import KMeans
        return [KMeans(t["k"], n_init=1, max_iter=iters, tol=0.0, random_state=g).fit(t["xn"][t["gn"] == g])
                for g in range(t["G"])]
    return run


def _cases():
    cases = []
    for n, k, d in KMEANS_ASSIGN_GPU:
        label = f"N={n},K={k},d={d}"
        flops, bytes_ = 2.0 * n * k * d, 4.0 * (n * d + k * d) + 12.0 * n
        make = _points(n, k, d)
        cases.append(Case("kmeans_assign", "fwd", label, ("cuda",), make, _assign("highest"),
                          providers=("reference",) + OURS, flops=flops, bytes=bytes_))
        cases.append(Case("kmeans_assign", "fwd", label + ",high", ("cuda",), make, _assign("high"),
                          providers=("triton", "cuda"), flops=flops, bytes=bytes_))
        cases.append(Case("kmeans_plusplus", "fwd", f"N={n},k={k},d={d}", ("cuda",), _points(n, k, d), _seed,
                          providers=("reference",) + OURS, flops=3.0 * n * d * k * (2 + np.log(k)),
                          bytes=4.0 * n * d * k, note="greedy, 2+log k trials"))
    for n, k, d in KMEANS_LLOYD_GPU:
        label = f"N={n},K={k},d={d}"
        flops, bytes_ = 2.0 * n * k * d + n * d, 8.0 * n * d + 8.0 * k * d
        for prec in ("highest", "high"):
            cases.append(Case("kmeans_lloyd", "full", label + f",{prec}", ("cuda",), _points(n, k, d), _lloyd(prec),
                              providers=OURS, flops=flops, bytes=bytes_, note="assign + update"))
    r = KMEANS_REFRESH
    label = f"G={r['groups']},n={r['per_group']},d={r['d']},k={r['k']},it={r['iters']}"
    make = _refresh_make(r["groups"], r["per_group"], r["d"], r["k"])
    n_all = r["groups"] * r["per_group"]
    flops = 4.0 * n_all * r["k"] * r["d"] * (r["iters"] + 1)
    cases.append(Case("kmeans_per_group", "full", label, ("cuda", "cpu"), make, _refresh(r["iters"]),
                      providers=("reference",) + OURS, flops=flops, bytes=4.0 * n_all * r["d"] * (2 * r["iters"] + 3)))
    cases.append(Case("kmeans_per_group", "full", label + ",sklearn", ("cpu",), make, _sklearn_refresh(r["iters"]),
                      providers=("reference",), flops=flops, note="scikit-learn KMeans per class"))
    c = KMEANS_CPU
    label = f"N={c['n']},d={c['d']},k={c['k']},it={c['iters']}"
    make = _kmeans_make(c["n"], c["d"], c["k"])
    flops = 2.0 * c["n"] * c["k"] * c["d"] * (c["iters"] + 1)
    for weighted, tag in ((False, ""), (True, ",weighted")):
        cases.append(Case("kmeans", "full", label + tag, ("cpu", "cuda"), make, _kmeans(c["iters"], weighted),
                          providers=("reference",) + OURS, flops=flops,
                          note="KMeans.fit, k-means++ + Lloyd" + (" with sample_weight" if weighted else "")))
        cases.append(Case("kmeans", "full", label + tag + ",sklearn", ("cpu",), make,
                          _sklearn_kmeans(c["iters"], weighted), providers=("reference",), flops=flops,
                          note="sklearn.cluster.KMeans" + (" with sample_weight" if weighted else "")))
    if HAVE_FAISS:
        cases.append(Case("kmeans", "full", label + ",faiss", ("cpu",), make, _faiss_kmeans(c["iters"]),
                          providers=("reference",), flops=flops, note="faiss.Kmeans (random init, all points)"))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case,provider", bench_params(CASES))
def test_kmeans(run_case, case, provider):
    run_case(case, provider)
