"""pairwise_sqdist: fused kernels vs the reference expansion and torch.cdist**2."""
import pytest
import torch

import clustr_fast
from clustr_fast import reference
from common import Case, compiled, randn
from conftest import bench_params
from shapes import PAIRWISE_CPU, PAIRWISE_GPU


def _make(n, k, d, grad=False):
    def make(dev):
        return dict(x=randn(n, d, device=dev, seed=0, requires_grad=grad),
                    c=randn(k, d, device=dev, seed=1, requires_grad=grad),
                    g=randn(n, k, device=dev, seed=2) if grad else None)
    return make


def _ref(x, c):
    return reference.pairwise_sqdist(x, c)


def _fwd(precision):
    def run(provider, t):
        if provider == "reference":
            return _ref(t["x"], t["c"])
        if provider == "compiled_reference":
            return compiled(_ref)(t["x"], t["c"])
        return clustr_fast.pairwise_sqdist(t["x"], t["c"], precision=precision)
    return run


def _cdist(provider, t):
    return torch.cdist(t["x"], t["c"]) ** 2


def _full(provider, t):
    x, c, g = t["x"], t["c"], t["g"]
    if provider == "reference":
        out = _ref(x, c)
    elif provider == "compiled_reference":
        out = compiled(_ref)(x, c)
    else:
        out = clustr_fast.pairwise_sqdist(x, c)
    return torch.autograd.grad(out, (x, c), g)


def _cases():
    cases = []
    for devs, shapes in ((("cuda",), PAIRWISE_GPU), (("cpu",), PAIRWISE_CPU)):
        for n, k, d in shapes:
            label = f"N={n},K={k},d={d}"
            flops = 2.0 * n * k * d
            bytes_ = 4.0 * (n * k + (n + k) * d)
            cases.append(Case("pairwise_sqdist", "fwd", label, devs, _make(n, k, d), _fwd("highest"),
                              flops=flops, bytes=bytes_))
            cases.append(Case("pairwise_sqdist", "fwd", label + ",cdist", devs, _make(n, k, d), _cdist,
                              providers=("reference",), flops=flops, bytes=bytes_,
                              note="torch.cdist(x, c)**2"))
            if devs == ("cuda",):
                cases.append(Case("pairwise_sqdist", "fwd", label + ",high", devs, _make(n, k, d), _fwd("high"),
                                  providers=("triton", "cuda"), flops=flops, bytes=bytes_))
            if n * k <= 60_000_000:
                cases.append(Case("pairwise_sqdist", "full", label, devs, _make(n, k, d, grad=True), _full,
                                  flops=3 * flops, bytes=3 * bytes_))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case,provider", bench_params(CASES))
def test_pairwise_sqdist(run_case, case, provider):
    run_case(case, provider)
