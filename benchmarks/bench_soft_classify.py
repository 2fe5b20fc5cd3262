"""Top-D soft cluster classification (Eq. 4) and the certified radius: fused kernels vs the references."""
import pytest
import torch

import clustr_fast
from clustr_fast import reference
from common import PROVIDERS, Case, compiled, randn
from conftest import bench_params
from shapes import SOFT_CPU, SOFT_GPU

PER_CLASS = 20  # centers per class: 200 centers = 10 classes, 2,000 = 100 classes
VARIANCE = 200.0


def _make(n, c, d, grad=False):
    num_classes = max(1, c // PER_CLASS)

    def make(dev):
        t = dict(f=randn(n, d, device=dev, seed=0, requires_grad=grad),
                 mu=randn(c, d, device=dev, seed=1, requires_grad=grad),
                 cls=(torch.arange(c, device=dev) % num_classes), nc=num_classes)
        if grad:
            t["g"] = randn(n, num_classes, device=dev, seed=2)
        return t
    return make


def _ref(f, mu, cls, nc, top_d):
    return reference.soft_cluster_logits(f, mu, cls, nc, variance=VARIANCE, top_d=top_d)


def _logits(provider, t, top_d, precision):
    if provider == "reference":
        return _ref(t["f"], t["mu"], t["cls"], t["nc"], top_d)
    if provider == "compiled_reference":
        return compiled(_ref)(t["f"], t["mu"], t["cls"], t["nc"], top_d)
    return clustr_fast.soft_cluster_logits(t["f"], t["mu"], t["cls"], t["nc"], variance=VARIANCE,
                                           top_d=top_d, precision=precision)


def _fwd(top_d, precision):
    def run(provider, t):
        return _logits(provider, t, top_d, precision)
    return run


def _full(top_d, precision):
    def run(provider, t):
        out = _logits(provider, t, top_d, precision)
        return torch.autograd.grad(out, (t["f"], t["mu"]), t["g"])
    return run


def _radius_ref(f, mu, cls):
    return reference.certified_radius(f, mu, cls, 1.0)


def _radius(provider, t):
    if provider == "reference":
        return _radius_ref(t["f"], t["mu"], t["cls"])
    if provider == "compiled_reference":
        return compiled(_radius_ref)(t["f"], t["mu"], t["cls"])
    return clustr_fast.certified_radius(t["f"], t["mu"], t["cls"], 1.0)


def _cases():
    cases = []
    for devs, shapes in ((("cuda",), SOFT_GPU), (("cpu",), SOFT_CPU)):
        for n, c, d, top_d in shapes:
            precision = "high" if c >= 2000 else "highest"
            label = f"N={n},C={c},d={d},D={top_d}" + (",high" if precision == "high" else "")
            nc = max(1, c // PER_CLASS)
            flops = 2.0 * n * c * d
            bytes_ = 4.0 * (n * d + c * d + n * nc) + 8.0 * n * top_d
            cases.append(Case("soft_cluster_logits", "fwd", label, devs, _make(n, c, d), _fwd(top_d, precision),
                              flops=flops, bytes=bytes_))
            if n * c <= 60_000_000 or devs == ("cuda",):
                cases.append(Case("soft_cluster_logits", "full", label, devs, _make(n, c, d, grad=True),
                                  _full(top_d, precision), flops=flops + 6.0 * n * top_d * d,
                                  bytes=2 * bytes_ + 4.0 * (n * d + c * d),
                                  providers=PROVIDERS + ("auto",)))  # auto: Triton forward, CUDA backward
        n, c, d, _ = shapes[0]
        cases.append(Case("certified_radius", "fwd", f"N={n},C={c},d={d}", devs, _make(n, c, d), _radius,
                          flops=3.0 * n * c * d * 2 + 3.0 * c * c * d, bytes=4.0 * (n * d + c * d + c * c + n),
                          note="two sweeps of direct differences"))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case,provider", bench_params(CASES))
def test_soft_classify(run_case, case, provider):
    run_case(case, provider)
