"""TF32 ("high") correctness of the Triton matrix-product kernels on this GPU, shape by shape.

    python tools/tf32_diag.py

"high" runs 3xTF32 in the Triton kernels (``_common.DOT_PRECISION``): on an H200 with
Triton 3.6, plain TF32 products in software-pipelined launches (num_stages >= 2) are off
by up to 0.17 of ||x||^2 + ||c||^2 on some shapes, where TF32 rounding gives about 1e-3
(docs/decisions.md). This script prints the largest error against float64 on the shapes
of the tests, for the pairwise forward and backward (also with other launch
configurations), ``kmeans_assign`` and ``soft_cluster_logits``, with "high" as plain TF32
and as shipped; then times each form. Errors above 2e-2 are marked BAD. "high" can map to
plain TF32 (``DOT_PRECISION[1] = "tf32"``) once it is right on every shape. GPU only.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, HERE)

import torch  # noqa: E402

import clustr_fast  # noqa: E402
from clustr_fast import reference  # noqa: E402
from clustr_fast.kernels import _common, pairwise_sqdist as pw  # noqa: E402
from common import sync  # noqa: E402
from report import time_call  # noqa: E402

DEV = torch.device(os.environ.get("CLUSTR_FAST_BENCH_DEVICE", "cuda"))
SHAPES = [(7, 3, 3), (33, 65, 1), (65, 33, 64), (127, 65, 130), (128, 128, 64), (1000, 3, 7), (300, 200, 96),
          (257, 129, 512), (20011, 65, 130), (4096, 1024, 128)]
if DEV.type == "cpu":  # a smoke run of the script itself (interpreter): small shapes, no times
    SHAPES = SHAPES[:4]
BAD = 2e-2


def _inputs(n, k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    c = torch.randn(k, d, generator=g) + 0.5
    w = torch.randn(n, k, generator=g)
    return x, c, w


def _mark(err):
    return f"{err:.1e}" + (" BAD" if err > BAD else "")


def _fwd_err(x, c, out):
    x64, c64 = x.double(), c.double()
    ref = (x64[:, None, :] - c64[None, :, :]).square().sum(-1)
    scale = x64.square().sum(1)[:, None] + c64.square().sum(1)[None, :] + 1.0
    return ((out.double().cpu() - ref).abs() / scale).max().item()


def _bwd_err(x, c, w, gx, gc):
    x64, c64, w64 = x.double(), c.double(), w.double()
    want_x = 2.0 * (w64.sum(1, keepdim=True) * x64 - w64 @ c64)
    want_c = 2.0 * (w64.sum(0)[:, None] * c64 - w64.t() @ x64)
    ex = ((gx.double().cpu() - want_x).abs().max() / want_x.abs().max()).item()
    ec = ((gc.double().cpu() - want_c).abs().max() / want_c.abs().max()).item()
    return ex, ec


def _with(obj, **attrs):
    """Context manager that sets module attributes and restores them."""
    class _Ctx:
        def __enter__(self):
            self.old = {k: getattr(obj, k) for k in attrs}
            for k, v in attrs.items():
                setattr(obj, k, v)

        def __exit__(self, *exc):
            for k, v in self.old.items():
                setattr(obj, k, v)
    return _Ctx()


def _high_as(form):
    """"high" as ``form`` ("tf32": plain TF32; None: as shipped) while the block runs."""
    return _with(_common, DOT_PRECISION={**_common.DOT_PRECISION, **({1: form} if form else {})})


FORMS = (("plain TF32", "tf32"), ("as shipped (3xTF32)", None))


def _k_major(t):
    """The same [rows, cols] values, stored column-contiguous (strides (1, rows))."""
    return t.t().contiguous().t()


def _table(title, variants, cell):
    """One row per (label, pairwise attributes, form of "high", argument): cell(n, k, d, argument)
    for each shape."""
    print(f"\n## {title}\n")
    print("| variant | " + " | ".join(f"{n}x{k}x{d}" for n, k, d in SHAPES) + " |")
    print("|---|" + "---:|" * len(SHAPES))
    for label, attrs, form, arg in variants:
        with _with(pw, **attrs), _high_as(form):
            cells = [cell(n, k, d, arg) for n, k, d in SHAPES]
        print(f"| {label} | " + " | ".join(cells) + " |")


def pairwise_forward():
    f32 = dict(pw.FWD_GPU_FP32)
    variants = [  # (label, pairwise module attributes, form of "high", precision code)
        ("plain TF32, as launched", {}, "tf32", 1),
        ("plain TF32, 1 stage", dict(FWD_GPU_FP32=dict(f32, num_stages=1)), "tf32", 1),
        ("plain TF32, 2 stages", dict(FWD_GPU_FP32=dict(f32, num_stages=2)), "tf32", 1),
        ("plain TF32, 64x64, 4 warps", dict(FWD_GPU_FP32=dict(f32, BLOCK_M=64, BLOCK_N=64, num_warps=4)), "tf32", 1),
        ("high as shipped (3xTF32)", {}, None, 1),
    ]
    def cell(n, k, d, prec):
        x, c, _ = _inputs(n, k, d)
        return _mark(_fwd_err(x, c, pw.pairwise_sqdist(x.to(DEV), c.to(DEV), prec)))

    _table("pairwise_sqdist forward: max |err| / (||x||^2 + ||c||^2 + 1)", variants, cell)


def pairwise_backward():
    b32 = dict(pw.BWD_GPU_FP32)

    def as_is(w, x, c, prec):
        return pw.pairwise_sqdist_backward(w, x, c, prec)

    def k_major(w, x, c, prec):  # every dot operand stored with its reduction axis contiguous
        return pw._bwd_one(w, x, _k_major(c), prec), pw._bwd_one(w.t().contiguous(), c, _k_major(x), prec)

    variants = [
        ("plain TF32, as launched", {}, "tf32", as_is),
        ("plain TF32, 1 stage", dict(BWD_GPU_FP32=dict(b32, num_stages=1)), "tf32", as_is),
        ("plain TF32, BLOCK_K 16", dict(BWD_GPU_FP32=dict(b32, BLOCK_K=16)), "tf32", as_is),
        ("plain TF32, operands with the reduction axis contiguous", {}, "tf32", k_major),
        ("high as shipped (3xTF32)", {}, None, as_is),
    ]
    def cell(n, k, d, fn):
        x, c, w = _inputs(n, k, d, seed=1)
        ex, ec = _bwd_err(x, c, w, *fn(w.to(DEV), x.to(DEV), c.to(DEV), 1))
        return f"{_mark(ex)} ; {_mark(ec)}"

    _table("pairwise_sqdist backward: max |err| / max |grad| (grad_x ; grad_c)", variants, cell)


def other_kernels():
    for label, form in FORMS:
        with _high_as(form):
            _other_kernels(label)


def _other_kernels(form):
    print(f"\n## kmeans_assign and soft_cluster_logits, \"high\" {form}\n")
    print("| shape | assign: max gap of the chosen center / scale | soft: share of rows clear of near-ties at "
          "the D-th center, max rel err on them |\n|---|---:|---:|")
    with clustr_fast.use_backend("triton"):
        for n, k, d in SHAPES:
            x, c, _ = _inputs(n, k, d, seed=2)
            lab, _ = clustr_fast.kmeans_assign(x.to(DEV), c.to(DEV), precision="high")
            x64, c64 = x.double(), c.double()
            dist = (x64[:, None, :] - c64[None, :, :]).square().sum(-1)
            scale = x64.square().sum(1) + c64.square().sum(1).max() + 1.0
            gap = ((dist.gather(1, lab.cpu()[:, None])[:, 0] - dist.min(1).values) / scale).max().item()
            ncls = max(1, k // 3)
            cls = torch.arange(k) % ncls
            top = min(k, 8)
            want = reference.soft_cluster_logits(x64, c64, cls, ncls, variance=float(d) + 1.0, top_d=top)
            got = clustr_fast.soft_cluster_logits(x.to(DEV), c.to(DEV), cls.to(DEV), ncls, variance=float(d) + 1.0,
                                                  top_d=top, precision="high").double().cpu()
            # rows whose float64 top-D set is clear of near-ties (a TF32 selection may differ there)
            srt = dist.sort(1).values
            margin = (srt[:, top] - srt[:, top - 1]) if top < k else torch.full((n,), float("inf"), dtype=dist.dtype)
            clear = margin > 1e-3 * scale
            fin = torch.isfinite(want) & clear[:, None]
            err = ((got - want).abs()[fin] / want.abs()[fin].clamp_min(1.0)).max().item() if fin.any() else 0.0
            same = clear
            print(f"| {n}x{k}x{d} | {_mark(gap)} | {same.float().mean():.4f}, {_mark(err)} |")


def times():
    """Medians (ms) with "high" in each form: pairwise_sqdist, kmeans_assign, soft_cluster_logits."""
    if DEV.type == "cpu":
        return
    n, k, d = 1_000_000, 1024, 128
    x = torch.randn(n, d, device=DEV)
    c = torch.randn(k, d, device=DEV)
    w = torch.randn(n, k, device=DEV)
    f = torch.randn(200_000, 512, device=DEV)
    mu = torch.randn(2000, 512, device=DEV)
    cls = torch.arange(2000, device=DEV) % 100
    print(f"\n## times (ms), H200 medians\n\n| \"high\" as | pairwise fwd {n}x{k}x{d} | pairwise bwd | "
          f"kmeans_assign {n}x{k}x{d} | soft fwd 200000x2000x512, D=32 |\n|---|---:|---:|---:|---:|")
    for label, form in FORMS:
        with _high_as(form), clustr_fast.use_backend("triton"):
            cells = [1e3 * time_call(lambda: pw.pairwise_sqdist(x, c, 1), DEV),
                     1e3 * time_call(lambda: pw.pairwise_sqdist_backward(w, x, c, 1), DEV),
                     1e3 * time_call(lambda: clustr_fast.kmeans_assign(x, c, precision="high"), DEV),
                     1e3 * time_call(lambda: clustr_fast.soft_cluster_logits(f, mu, cls, 100, variance=200.0, top_d=32,
                                                                             precision="high"), DEV)]
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    sync(DEV)


if __name__ == "__main__":
    print(f"device: {torch.cuda.get_device_name() if DEV.type == 'cuda' else 'cpu (smoke run)'}, "
          f"torch {torch.__version__}")
    for step in (pairwise_forward, pairwise_backward, other_kernels, times):
        try:
            step()
        except Exception as exc:  # one failing part must not hide the others
            print(f"{step.__name__}: {type(exc).__name__}: {exc}")
