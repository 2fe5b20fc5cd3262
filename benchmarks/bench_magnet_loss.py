"""Magnet loss: fused kernels vs the reference, both forms, forward and forward+backward.

Batch form at the ClusTR shape (12 clusters x 20 samples x 512): the "full" group is
one training step's loss work (forward + backward, wall time including the Python
call), which runs the fused batch op (forward and gradient in one kernel call); the
",unfused" case forces the earlier two-op path for comparison, ",variance=given" and
",reduction=none" the other fused variants; the reference-code-style case is the
per-sample Python loop of the ClusTR reference code. "fwd" cases run the forward alone under
torch.no_grad() (inference) for every provider. Global form: N feats against C learned centers;
its "full" case runs, on the CPU backends, the fused op (loss and gradient in one pass). The GPU case
N=1,000,000, C=4,096, d=128 runs only the fused backends (the reference would need
several [N, C] float32 buffers, 16 GB each) and records the peak extra memory.
"""
import pytest
import torch

import clustr_fast
from clustr_fast import reference
from clustr_fast import _backend
from common import Case, compiled, randn
from conftest import bench_params
from shapes import MAGNET_BATCH, MAGNET_GLOBAL_CPU, MAGNET_GLOBAL_GPU

ALPHA = 12.5


def _make_batch(m, per, d):
    def make(dev):
        ids = torch.arange(m).repeat_interleave(per)
        ids = ids[torch.randperm(m * per, generator=torch.Generator().manual_seed(3))].to(dev)
        return dict(f=randn(m * per, d, device=dev, seed=0, requires_grad=True), ids=ids,
                    cls=(torch.arange(m) // 2).to(dev))
    return make


def _make_global(n, c, d):
    def make(dev):
        classes = (torch.arange(c) // 2).to(dev)
        assign = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(4)).to(dev)
        return dict(f=randn(n, d, device=dev, seed=0, requires_grad=True),
                    c=randn(c, d, device=dev, seed=1, requires_grad=True), a=assign, cls=classes)
    return make


def _ref_batch(f, ids, cls):
    return reference.magnet_loss_batch(f, ids, cls, alpha=ALPHA)


def _ref_global(f, c, a, cls):
    return reference.magnet_loss(f, c, a, cls, alpha=ALPHA)


def reference_code_style(feats, ids, classes, alpha=ALPHA, eps=1e-8):
    """The ClusTR reference code's loop: cluster means, then one loss per sample."""
    m = classes.shape[0]
    means = torch.stack([feats[ids == k].mean(0) for k in range(m)])
    var = sum(((feats[ids == k] - means[k]) ** 2).sum() for k in range(m)) / (feats.shape[0] - 1)
    losses = []
    for i in range(feats.shape[0]):
        dist = ((feats[i] - means) ** 2).sum(1)
        own = ids[i]
        numerator = torch.exp(-dist[own] / (2 * var) - alpha)
        denominator = torch.exp(-dist[classes != classes[own]] / (2 * var)).sum()
        losses.append(torch.relu(-torch.log(numerator / (denominator + eps) + eps)))
    return torch.stack(losses).mean()


def _run_batch(mode):
    def call(provider, t):
        f, ids, cls = t["f"], t["ids"], t["cls"]
        if provider == "reference":
            return _ref_batch(f, ids, cls)
        if provider == "compiled_reference":
            return compiled(_ref_batch)(f, ids, cls)
        return clustr_fast.magnet_loss_batch(f, ids, cls, alpha=ALPHA)

    def run(provider, t):
        if mode == "fwd":  # the forward alone (inference): no graph, no gradient
            with torch.no_grad():
                return call(provider, t)
        return torch.autograd.grad(call(provider, t), (t["f"],))
    return run


def _run_batch_variant(reduction, variance=None, fused=True):
    """fwd+bwd of the batch form with a reduction / given variance; ``fused=False`` forces the
    two-op path (global-form kernels on the batch means), the path the fused op replaced."""
    def run(provider, t):
        f, ids, cls = t["f"], t["ids"], t["cls"]
        if provider == "reference":
            out = reference.magnet_loss_batch(f, ids, cls, alpha=ALPHA, variance=variance, reduction=reduction)
        else:
            saved = _backend.FUSED_BATCH_MAX_CPU_ENTRIES, _backend.FUSED_BATCH_MAX_CLUSTERS
            if not fused:
                _backend.FUSED_BATCH_MAX_CPU_ENTRIES, _backend.FUSED_BATCH_MAX_CLUSTERS = -1, -1
            try:
                out = clustr_fast.magnet_loss_batch(f, ids, cls, alpha=ALPHA, variance=variance,
                                                    reduction=reduction)
            finally:
                _backend.FUSED_BATCH_MAX_CPU_ENTRIES, _backend.FUSED_BATCH_MAX_CLUSTERS = saved
        grad = t.get("g") if reduction == "none" else None
        return torch.autograd.grad(out, (f,), grad_outputs=grad)
    return run


def _make_batch_rows(m, per, d):
    make = _make_batch(m, per, d)

    def make_rows(dev):
        t = make(dev)
        t["g"] = randn(m * per, device=dev, seed=5)
        return t
    return make_rows


def _run_reference_code(provider, t):
    out = reference_code_style(t["f"], t["ids"], t["cls"])
    return torch.autograd.grad(out, (t["f"],))


def _run_global(mode):
    def call(provider, t):
        f, c, a, cls = t["f"], t["c"], t["a"], t["cls"]
        if provider == "reference":
            return _ref_global(f, c, a, cls)
        if provider == "compiled_reference":
            return compiled(_ref_global)(f, c, a, cls)
        return clustr_fast.magnet_loss(f, c, a, cls, alpha=ALPHA)

    def run(provider, t):
        if mode == "fwd":  # the forward alone (inference); with a gradient wanted, the CPU runs the fused op
            with torch.no_grad():
                return call(provider, t)
        return torch.autograd.grad(call(provider, t), (t["f"], t["c"]))
    return run


def _counts(n, c, d, mode):
    """FLOPs (distance products, recomputed once in backward, plus the two gradient products)."""
    fwd_flops, fwd_bytes = 2.0 * n * c * d, 4.0 * (n + c) * d
    if mode == "fwd":
        return fwd_flops, fwd_bytes
    return 3 * fwd_flops, 3 * fwd_bytes


def _cases():
    cases = []
    m, per, d = MAGNET_BATCH["clusters"], MAGNET_BATCH["per_cluster"], MAGNET_BATCH["d"]
    label = f"batch M={m},per={per},d={d}"
    for mode in ("fwd", "full"):
        fl, by = _counts(m * per, m, d, mode)
        cases.append(Case("magnet_loss", mode, label, ("cpu", "cuda"), _make_batch(m, per, d), _run_batch(mode),
                          flops=fl, bytes=by))
    fl, by = _counts(m * per, m, d, "full")
    fused_providers = ("reference", "cpu", "triton", "cuda")
    cases.append(Case("magnet_loss", "full", label + ",unfused", ("cpu", "cuda"), _make_batch(m, per, d),
                      _run_batch_variant("mean", fused=False), providers=("cpu", "triton", "cuda"),
                      flops=fl, bytes=by, note="two-op path (global-form kernels on the batch means)"))
    cases.append(Case("magnet_loss", "full", label + ",variance=given", ("cpu", "cuda"), _make_batch(m, per, d),
                      _run_batch_variant("mean", variance=40.0), providers=fused_providers, flops=fl, bytes=by))
    cases.append(Case("magnet_loss", "full", label + ",reduction=none", ("cpu", "cuda"), _make_batch_rows(m, per, d),
                      _run_batch_variant("none"), providers=fused_providers, flops=fl, bytes=by,
                      note="the backward runs the fused kernel again with the row gradients"))
    cases.append(Case("magnet_loss", "full", label + ",reference-code", ("cpu", "cuda"), _make_batch(m, per, d),
                      _run_reference_code, providers=("reference",), flops=fl, bytes=by,
                      note="per-sample Python loop as in the ClusTR reference code"))
    for devs, shapes in ((("cuda",), MAGNET_GLOBAL_GPU), (("cpu",), MAGNET_GLOBAL_CPU)):
        for n, c, d in shapes:
            label = f"N={n},C={c},d={d}"
            big = n * c > 500_000_000
            providers = ("triton", "cuda") if big else ("reference", "compiled_reference", "cpu", "triton", "cuda")
            note = "fused only: the reference needs [N, C] buffers; see peak memory" if big else ""
            for mode in ("fwd", "full"):
                fl, by = _counts(n, c, d, mode)
                cases.append(Case("magnet_loss", mode, label, devs, _make_global(n, c, d), _run_global(mode),
                                  providers=providers, flops=fl, bytes=by, note=note))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case,provider", bench_params(CASES))
def test_magnet_loss(run_case, case, provider):
    run_case(case, provider)
    if provider in ("cuda", "triton") and torch.cuda.is_available() and "fused only" in case.note:
        # peak memory above the inputs and outputs of one call, recorded for the report
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = case.make(torch.device("cuda"))
        with clustr_fast.use_backend(provider):
            case.run(provider, t)
        torch.cuda.synchronize()
        inputs = sum(v.numel() * v.element_size() for v in t.values() if isinstance(v, torch.Tensor))
        grads = inputs if case.mode == "full" else 0
        extra = torch.cuda.max_memory_allocated() - base - inputs - grads
        case.extra[f"peak_extra_MB_{provider}"] = extra / 2**20
        print(f"{case.id} {provider}: peak extra memory {extra / 2**20:.1f} MB")
