"""A/B timings of Triton launch configurations, and a check of TF32 ``tl.dot`` on this GPU.

    python tools/ab_triton.py

1. TF32: ``pairwise_sqdist``, ``kmeans_assign`` and ``soft_cluster_logits`` (Triton) with
   "high" as plain TF32 (``DOT_PRECISION[1] = "tf32"``; not the default: plain TF32 gives wrong
   products on Triton 3.6, see tf32_diag.py)
   against float64: the distance error relative to ||x||^2 + ||c||^2 (TF32 rounding gives
   about 1e-3), the share of labels (selections) equal to the float64 ones; then times.
2. Launch configurations (module-level dicts of the Triton wrappers): the current one
   against alternatives, for the soft-logits forward and backward, the k-means++ eval
   tile, the dense k-means assignment and the certified-radius tile.
3. k-means++ anatomy: time per step (the slope between two k) and, under torch.profiler,
   the GPU time per step of each kernel; the rest of a step is launch and host time.
Medians of synchronised wall-clock calls, as in ``report.py``. GPU only.

    python tools/ab_triton.py [--only tf32_check config_sweep plusplus_anatomy]
"""
from __future__ import annotations

import os
import sys

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, HERE)

import torch  # noqa: E402

import clustr_fast  # noqa: E402
from clustr_fast.kernels import _common, certified_radius as radius_k, kmeans as kmeans_k  # noqa: E402
from clustr_fast.kernels import magnet_loss_batch as batch_k, soft_cluster_logits as soft_k  # noqa: E402
from common import randn, sync  # noqa: E402
from report import time_call  # noqa: E402
from shapes import KMEANS_ASSIGN_GPU, KMEANS_LLOYD_GPU, SOFT_GPU  # noqa: E402

DEV = torch.device(os.environ.get("CLUSTR_FAST_BENCH_DEVICE", "cuda"))  # cpu: a smoke run (interpreter)
PP_ROWS = 1_000_000  # k-means++ rows (d = 128)
if DEV.type == "cpu":  # smoke run of the script itself under the interpreter: tiny shapes
    PP_ROWS = 3000
    SOFT_GPU = [(300, 40, 64, 8), (300, 60, 64, 8)]
    KMEANS_ASSIGN_GPU = [(500, 64, 32)]
    KMEANS_LLOYD_GPU = [(500, 128, 32)]


def _ms(fn):
    return 1e3 * time_call(fn, DEV)


def tf32_check():
    old = dict(_common.DOT_PRECISION)
    _common.DOT_PRECISION[1] = "tf32"
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4096, 128, generator=g)
        c = torch.randn(1024, 128, generator=g)
        ref = torch.cdist(x.double(), c.double()).square()
        scale = x.double().square().sum(1, keepdim=True) + c.double().square().sum(1)
        xd, cd = x.to(DEV), c.to(DEV)
        with clustr_fast.use_backend("triton"):
            for prec in ("highest", "high"):
                got = clustr_fast.pairwise_sqdist(xd, cd, precision=prec).double().cpu()
                err = ((got - ref).abs() / scale).max().item()
                lab, _ = clustr_fast.kmeans_assign(xd, cd, precision=prec)
                same = (lab.cpu() == ref.argmin(1)).float().mean().item()
                print(f"TF32 check {prec} (DOT_PRECISION[1]={_common.DOT_PRECISION[1]}): pairwise max err / "
                      f"(|x|^2+|c|^2) = {err:.2e}; kmeans_assign labels equal to float64 argmin: {same:.4f}")
            from clustr_fast import reference
            f = torch.randn(3000, 64, generator=g)
            mu = 1.5 * torch.randn(2000, 64, generator=g)
            cls = torch.arange(2000) // 2
            want = reference.soft_cluster_logits(f.double(), mu.double(), cls, 1001, variance=16.5, top_d=32)
            got = clustr_fast.soft_cluster_logits(f.to(DEV), mu.to(DEV), cls.to(DEV), 1001, variance=16.5, top_d=32,
                                                  precision="high").double().cpu()
            same = (torch.isinf(got) == torch.isinf(want)).all(1)
            fin = torch.isfinite(want) & same[:, None]
            err = ((got - want).abs()[fin] / want.abs()[fin].clamp_min(1.0)).max().item()
            print(f"TF32 check soft_cluster_logits high: rows with the float64 selection {same.float().mean():.4f}, "
                  f"max rel err on them {err:.2e}")
            n, c, d, top_d = SOFT_GPU[1]
            fb = randn(n, d, device=DEV, seed=0)
            mb = randn(c, d, device=DEV, seed=1)
            cb = torch.arange(c, device=DEV) % (c // 20)
            run = lambda: clustr_fast.soft_cluster_logits(fb, mb, cb, c // 20, variance=200.0, top_d=top_d,  # noqa
                                                          precision="high")
            run()
            print(f"soft_cluster_logits fwd N={n},C={c},d={d},D={top_d} high (TF32): {_ms(run):.3f} ms")
            del fb, mb
            n, k, d = KMEANS_ASSIGN_GPU[0]
            xb = randn(n, d, device=DEV, seed=0)
            cb = randn(k, d, device=DEV, seed=1)
            for prec in ("highest", "high"):
                clustr_fast.kmeans_assign(xb, cb, precision=prec)
                ms = _ms(lambda: clustr_fast.kmeans_assign(xb, cb, precision=prec))
                print(f"kmeans_assign {n}x{k}x{d} {prec} (TF32 for high): {ms:.3f} ms")
    finally:
        _common.DOT_PRECISION.clear()
        _common.DOT_PRECISION.update(old)


def _same(a, b) -> str:
    """Whether two outputs (tensors or tuples of them) agree: equal, close (max difference) or not."""
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    worst = 0.0
    for u, v in zip(a, b):
        if u.shape != v.shape:
            return "DIFFERENT shape"
        if u.dtype in (torch.int64, torch.int32):
            if not torch.equal(u, v):
                return f"DIFFERENT ({(u != v).float().mean().item():.4f} of entries)"
            continue
        fin = torch.isfinite(u) & torch.isfinite(v)
        if not torch.equal(torch.isfinite(u), torch.isfinite(v)):
            return "DIFFERENT infinities"
        if fin.any():
            worst = max(worst, ((u - v).abs()[fin] / v.abs()[fin].clamp_min(1.0)).max().item())
    return "equal" if worst == 0.0 else f"close ({worst:.1e})"


def _sweep(title, obj, attr, variants, run):
    """Time ``run`` with ``obj.attr`` at its current value and at each of ``variants``; each variant's
    output is compared with the current one's."""
    current = getattr(obj, attr)
    want = None
    for label, value in [("current", current)] + list(variants):
        setattr(obj, attr, value)
        try:
            out = run()
            check = "" if want is None else _same(out, want)
            want = out if want is None else want
            cell = f"{_ms(run):.3f} | {check}"
        except Exception as exc:  # a configuration that does not compile or fit is a result too
            cell = f"error: {type(exc).__name__} |"
        finally:
            setattr(obj, attr, current)
        print(f"| {title} | {attr} {label}: {value} | {cell} |")


def config_sweep():
    print("| case | configuration | ms | output against current |\n|---|---|---:|---|")
    n, c, d, top_d = SOFT_GPU[0]
    f = randn(n, d, device=DEV, seed=0, requires_grad=True)
    mu = randn(c, d, device=DEV, seed=1, requires_grad=True)
    nc = c // 20
    cls = torch.arange(c, device=DEV) % nc
    g = randn(n, nc, device=DEV, seed=2)

    def fwd():
        with torch.no_grad():
            return clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=200.0, top_d=top_d)

    def full():
        return torch.autograd.grad(clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=200.0, top_d=top_d),
                                   (f, mu), g)

    base = dict(soft_k.FWD_GPU_FP32)
    with clustr_fast.use_backend("triton"):
        x = randn(PP_ROWS, 128, device=DEV, seed=3)

        def seed64():
            return clustr_fast.kmeans_plusplus(x, 64, generator=torch.Generator(DEV).manual_seed(0))

        _sweep(f"k-means++ {PP_ROWS} x 128, k=64", kmeans_k, "PP_EVAL_LOOP",
               [(f"unroll {u}, stages {st}", dict(UNROLL=u, STAGES=st))
                for u, st in ((2, None), (4, None), (8, None), (1, 2), (1, 3), (1, 4), (2, 3), (4, 3))], seed64)
        loop = dict(kmeans_k.PP_EVAL_LOOP)
        for loop_label, loop_value in (("loop as is", loop), ("stages 3", dict(loop, STAGES=3)),
                                       ("unroll 4", dict(loop, UNROLL=4))):
            kmeans_k.PP_EVAL_LOOP = loop_value
            try:
                _sweep(f"k-means++ {PP_ROWS} x 128, k=64, {loop_label}", kmeans_k, "PP_EVAL_BLOCK_D",
                       [("8", 8), ("16", 16)], seed64)
            finally:
                kmeans_k.PP_EVAL_LOOP = loop
        _sweep(f"k-means++ {PP_ROWS} x 128, k=64", kmeans_k, "PP_BLOCK_ROWS", [(str(b), b) for b in (256, 1024, 2048)],
               seed64)
        elems = kmeans_k.PP_EVAL_ELEMS
        for warps, tile in ((8, 2 * elems), (2, elems // 2)):  # the same tile entries per thread
            kmeans_k.PP_EVAL_ELEMS = tile
            try:
                _sweep(f"k-means++ {PP_ROWS} x 128, k=64, PP_EVAL_ELEMS {tile}", kmeans_k, "PP_EVAL_WARPS",
                       [(str(warps), warps)], seed64)
            finally:
                kmeans_k.PP_EVAL_ELEMS = elems
        n_a, k_a, d_a = KMEANS_ASSIGN_GPU[0]
        xa = randn(n_a, d_a, device=DEV, seed=0)
        ca = randn(k_a, d_a, device=DEV, seed=1)
        assign = dict(kmeans_k.ASSIGN_GPU_FP32)
        assign_variants = [("64x128, 4 warps", dict(assign, BLOCK_M=64, num_warps=4)),
                           ("d chunks of 64", dict(assign, BLOCK_D=64)),
                           ("64x128, 4 warps, d chunks of 64", dict(assign, BLOCK_M=64, BLOCK_D=64, num_warps=4)),
                           ("128x256, 8 warps", dict(assign, BLOCK_N=256)),
                           ("4 stages", dict(assign, num_stages=4)),
                           ("64x256, 8 warps", dict(assign, BLOCK_M=64, BLOCK_N=256))]
        for prec in ("high", "highest"):
            _sweep(f"kmeans_assign {n_a}x{k_a}x{d_a} {prec}", kmeans_k, "ASSIGN_GPU_FP32", assign_variants,
                   lambda prec=prec: clustr_fast.kmeans_assign(xa, ca, precision=prec)[0])
        del xa, ca
        n_l, k_l, d_l = KMEANS_LLOYD_GPU[0]  # the Lloyd case's assignment
        xl = randn(n_l, d_l, device=DEV, seed=0)
        cl = randn(k_l, d_l, device=DEV, seed=1)
        _sweep(f"kmeans_assign {n_l}x{k_l}x{d_l} high", kmeans_k, "ASSIGN_GPU_FP32", assign_variants,
               lambda: clustr_fast.kmeans_assign(xl, cl, precision="high")[0])
        del xl, cl
        _sweep(f"soft fwd N={n},C={c},d={d},D={top_d}", soft_k, "FWD_GPU_FP32",
               [("8 warps", dict(base, num_warps=8)), ("3 stages", dict(base, num_stages=3)),
                ("C tiles of 32", dict(base, BLOCK_N=32)),
                ("C tiles of 32, d chunks of 64", dict(base, BLOCK_N=32, BLOCK_D=64))], fwd)
        _sweep(f"soft fwd N={n},C={c},d={d},D={top_d}", soft_k, "FWD_LIST_ELEMS", [("32 rows", 1024)], fwd)
        soft_k.FWD_ROWS_MAX = 128
        soft_k.FWD_GPU_FP32 = dict(base, num_warps=8)  # 128 rows with 4 warps spill 748 B (sass_stats)
        try:
            _sweep(f"soft fwd N={n},C={c},d={d},D={top_d}, FWD_ROWS_MAX 128, 8 warps", soft_k, "FWD_LIST_ELEMS",
                   [("128 rows", 4096)], fwd)
        finally:
            soft_k.FWD_ROWS_MAX = 64
            soft_k.FWD_GPU_FP32 = base
        bwd = dict(soft_k.BWD_GPU)
        _sweep(f"soft fwd+bwd N={n},C={c},d={d},D={top_d}", soft_k, "BWD_GPU",
               [("4 warps", dict(bwd, num_warps=4)), ("d chunks of 32", dict(bwd, BLOCK_D=32))], full)
        _sweep(f"soft fwd+bwd N={n},C={c},d={d},D={top_d}", soft_k, "BWD_DENSE_MAX_RATIO",
               [("grad_mu by atomics", 0)], full)
        if len(SOFT_GPU) > 1:  # C / D = 62 there: atomics by default; dense products would take 2 N C d flops
            n2, c2, d2, top_d2 = SOFT_GPU[1]
            f2 = randn(n2, d2, device=DEV, seed=0, requires_grad=True)
            mu2 = randn(c2, d2, device=DEV, seed=1, requires_grad=True)
            cls2 = torch.arange(c2, device=DEV) % (c2 // 20)
            g2 = randn(n2, c2 // 20, device=DEV, seed=2)
            _sweep(f"soft fwd+bwd N={n2},C={c2},d={d2},D={top_d2}", soft_k, "BWD_DENSE_MAX_RATIO",
                   [("grad_mu by dense products", 100)],
                   lambda: torch.autograd.grad(clustr_fast.soft_cluster_logits(f2, mu2, cls2, c2 // 20, variance=200.0,
                                                                               top_d=top_d2), (f2, mu2), g2))
            del f2, mu2, g2
        mb, ml, md = 12, 20, 512  # the ClusTR batch: 12 clusters x 20 samples x 512
        fb = randn(mb * ml, md, device=DEV, seed=4, requires_grad=True)
        ids_b = torch.arange(mb, device=DEV).repeat_interleave(ml)
        cls_b = torch.arange(mb, device=DEV) // 2

        def batch():
            return torch.autograd.grad(clustr_fast.magnet_loss_batch(fb, ids_b, cls_b, alpha=12.5), fb)

        _sweep(f"magnet batch {mb}x{ml}x{md} fwd+bwd", batch_k, "BATCH_TILE_ELEMS",
               [("64 column programs", 2048), ("16 column programs", 8192)], batch)
        _sweep(f"magnet batch {mb}x{ml}x{md} fwd+bwd", batch_k, "BATCH_WARPS", [("8 warps", 8)], batch)
        tile = dict(radius_k.GPU_TILE_FP32)
        _sweep(f"certified_radius N={n},C={c},d={d}", radius_k, "GPU_TILE_FP32",
               [("d chunks of 8", dict(tile, BLOCK_D=8)), ("64 rows", dict(tile, BLOCK_M=64)),
                ("64 rows, d chunks of 8", dict(tile, BLOCK_M=64, BLOCK_D=8)),
                ("64 rows, 8 warps", dict(tile, BLOCK_M=64, num_warps=8))],
               lambda: clustr_fast.certified_radius(f.detach(), mu.detach(), cls, 1.0))


def plusplus_anatomy():
    from torch.profiler import ProfilerActivity, profile
    x = randn(PP_ROWS, 128, device=DEV, seed=3)
    with clustr_fast.use_backend("triton"):
        run = {k: (lambda k=k: clustr_fast.kmeans_plusplus(x, k, generator=torch.Generator(DEV).manual_seed(0)))
               for k in (32, 288)}
        ms = {}
        for k, fn in run.items():
            fn()
            ms[k] = _ms(fn)
        per_step = (ms[288] - ms[32]) / 256
        print(f"k-means++ {PP_ROWS} x 128 (Triton): k=32 {ms[32]:.2f} ms, k=288 {ms[288]:.2f} ms -> {per_step:.4f} ms per step")
        with profile(activities=[ProfilerActivity.CUDA if DEV.type == "cuda" else ProfilerActivity.CPU]) as prof:
            run[32]()
            sync(DEV)
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
            if e.device_time_total > 0:
                print(f"  {e.device_time_total / 32 / 1e3:8.4f} ms per step  x{e.count:<4d} {e.key[:90]}")


STEPS = (plusplus_anatomy, config_sweep, tf32_check)  # most wanted first

if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="steps: " + " ".join(s.__name__ for s in STEPS))
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (smoke run)"
    print(f"device: {name}, torch {torch.__version__}")
    for step in STEPS:
        if args.only and step.__name__ not in args.only:
            continue
        try:
            step()
        except Exception as exc:  # one failing part must not hide the other
            print(f"{step.__name__}: {type(exc).__name__}: {exc}")
