"""Host time of one public call on tiny inputs: what every benchmark time includes besides the kernels.

``report.py`` synchronises before and after each call, so its GPU times are host time (argument
checks, backend choice, the custom-op and autograd layers, launches, device syncs in the checks)
plus kernel time. On tiny inputs the kernels take microseconds, so the median wall time of a call
is close to its host time. Each row times the public call (forward alone, or forward and backward
through ``torch.autograd.grad`` as the "full" benchmark cases do) for each backend that runs on the
device, next to three floors: one small torch op, a torch op's forward and backward, and a trivial
``autograd.Function``'s (the last column: each call over that floor).

    python tools/host_overhead.py [--device cuda] [--reps 300] [--backends cuda reference]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import clustr_fast  # noqa: E402
from report import time_call  # noqa: E402

CALLS = {}


def call(name):
    def register(fn):
        CALLS[name] = fn
        return fn
    return register


def _inputs(dev):
    g = torch.Generator().manual_seed(0)

    def r(*shape, grad=False):
        return torch.randn(*shape, generator=g).to(dev).requires_grad_(grad)
    n, c, d, nc = 16, 8, 16, 4
    return dict(x=r(n, d), xg=r(n, d, grad=True), c=r(c, d), cg=r(c, d, grad=True),
                cls=(torch.arange(c) % nc).to(dev), nc=nc, assign=(torch.arange(n) % c).to(dev),
                ids=(torch.arange(n) % 4).to(dev), bcls=torch.tensor([0, 0, 1, 1]).to(dev),
                gsoft=r(n, nc), groups=(torch.arange(n) // 8).to(dev))


@call("floor: x.sum()")
def _floor(t, gen):
    return t["x"].sum()


@call("floor: autograd.grad of x.square().sum()")
def _floor_grad(t, gen):
    return torch.autograd.grad(t["xg"].square().sum(), t["xg"])


class _Trivial(torch.autograd.Function):
    """The floor of a custom differentiable op: one Python autograd.Function, one torch op each way."""

    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, grad):
        return grad * 2.0


TRIVIAL = "floor: trivial autograd.Function, autograd.grad"


@call(TRIVIAL)
def _floor_function(t, gen):
    return torch.autograd.grad(_Trivial.apply(t["xg"]).sum(), t["xg"])


@call("pairwise_sqdist fwd")
def _pair(t, gen):
    return clustr_fast.pairwise_sqdist(t["x"], t["c"])


@call("pairwise_sqdist full")
def _pair_full(t, gen):
    return torch.autograd.grad(clustr_fast.pairwise_sqdist(t["xg"], t["cg"]).sum(), (t["xg"], t["cg"]))


@call("magnet_loss full (variance from the clusters)")
def _magnet(t, gen):
    loss = clustr_fast.magnet_loss(t["xg"], t["cg"], t["assign"], t["cls"], alpha=12.5)
    return torch.autograd.grad(loss, (t["xg"], t["cg"]))


@call("magnet_loss_batch full")
def _magnet_batch(t, gen):
    return torch.autograd.grad(clustr_fast.magnet_loss_batch(t["xg"], t["ids"], t["bcls"], alpha=12.5), t["xg"])


@call("soft_cluster_logits fwd (no_grad)")
def _soft(t, gen):
    with torch.no_grad():
        return clustr_fast.soft_cluster_logits(t["x"], t["c"], t["cls"], t["nc"], variance=2.0, top_d=3)


@call("soft_cluster_logits full")
def _soft_full(t, gen):
    out = clustr_fast.soft_cluster_logits(t["xg"], t["cg"], t["cls"], t["nc"], variance=2.0, top_d=3)
    return torch.autograd.grad(out, (t["xg"], t["cg"]), t["gsoft"])


@call("certified_radius")
def _radius(t, gen):
    return clustr_fast.certified_radius(t["x"], t["c"], t["cls"], 1.0)


@call("kmeans_assign")
def _assign(t, gen):
    return clustr_fast.kmeans_assign(t["x"], t["c"])


@call("kmeans_update")
def _update(t, gen):
    return clustr_fast.kmeans_update(t["x"], t["assign"], t["c"].shape[0], prev_centers=t["c"])


@call("kmeans_plusplus k=2")
def _pp2(t, gen):
    return clustr_fast.kmeans_plusplus(t["x"], 2, generator=gen)


@call("kmeans_plusplus k=10")
def _pp10(t, gen):
    return clustr_fast.kmeans_plusplus(t["x"], 10, generator=gen)


@call("KMeans(2, max_iter=20, tol=0).fit")
def _fit(t, gen):
    return clustr_fast.KMeans(2, max_iter=20, tol=0.0, random_state=0).fit(t["x"])


@call("kmeans_per_group G=2, k=2, 20 it")
def _groups(t, gen):
    return clustr_fast.kmeans_per_group(t["x"], t["groups"], 2, max_iter=20, tol=0.0, generator=gen)


def median_us(fn, dev, reps):
    """Median of ``reps`` synchronised calls (``report.time_call``) after 10 untimed ones."""
    for _ in range(10):
        fn()
    return time_call(fn, dev, min_reps=reps, max_reps=reps, budget_s=0.0) * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--backends", nargs="+", help="backends to time (default: those that run on the device)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    # the interpreter is no measure of a Triton launch, so CPU rows leave Triton out
    wanted = ("cuda", "triton", "reference") if dev.type == "cuda" else ("cpu", "reference")
    backends = [b for b in (args.backends or wanted) if b in clustr_fast.backends()]
    t = _inputs(dev)
    gen = torch.Generator(device=dev)
    print(f"host time of one call, median microseconds, {args.reps} calls, device {dev}, "
          f"torch {torch.__version__}")
    print("| call | " + " | ".join(backends) + f" | {backends[0]} / trivial Function |")
    print("|---|" + "---:|" * (len(backends) + 1))
    floor = None
    for name, fn in CALLS.items():
        cells = []
        for b in backends:
            if name.startswith("floor") and b != backends[0]:
                cells.append("")
                continue
            try:
                gen.manual_seed(0)
                with clustr_fast.use_backend(b):
                    us = median_us(lambda: fn(t, gen), dev, args.reps)
                cells.append(f"{us:.0f}")
                if b == backends[0]:
                    floor = us if name == TRIVIAL else floor
                    first = us
            except Exception as exc:  # one failing call must not hide the rest
                cells.append(f"error: {type(exc).__name__}")
                first = None
                print(f"<!-- {name} [{b}]: {exc} -->", file=sys.stderr)
        ratio = f"{first / floor:.2f}" if floor and first and not name.startswith("floor") else ""
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
