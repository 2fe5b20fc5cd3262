"""Host time of one public call on tiny inputs: what every benchmark time includes besides the kernels.

``report.py`` synchronises before and after each call, so its GPU times are host time (argument
checks, backend choice, the custom-op and autograd layers, launches, device syncs in the checks)
plus kernel time. On tiny inputs the kernels take microseconds, so the median wall time of a call
is close to its host time. Each row times the public call (forward alone, or forward and backward
through ``torch.autograd.grad`` as the "full" benchmark cases do) for each backend that runs on the
device, next to three floors: one small torch op, a torch op's forward and backward, and a trivial
``autograd.Function``'s (the last column: each call over that floor).

    python tools/host_overhead.py [--device cuda] [--reps 300] [--runs 6] [--backends cuda reference]
                                  [--save [DIR]]   (DIR/<card>.json, one entry per commit)
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
DEFAULT_RESULTS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "results",
                                                "host_overhead"))


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


def measure(backends, dev, reps, runs):
    """{call: {backend: microseconds}}: per call and backend the least of ``runs`` medians, the runs
    interleaved over the calls (a noisy machine slows some runs of a call, not all of them)."""
    t = _inputs(dev)
    gen = torch.Generator(device=dev)
    out: dict[str, dict[str, float | str]] = {name: {} for name in CALLS}
    for _ in range(runs):
        for name, fn in CALLS.items():
            for b in backends:
                if name.startswith("floor") and b != backends[0]:
                    continue
                try:
                    gen.manual_seed(0)
                    with clustr_fast.use_backend(b):
                        us = median_us(lambda: fn(t, gen), dev, reps)
                except Exception as exc:  # one failing call must not hide the rest
                    out[name][b] = f"error: {type(exc).__name__}"
                    print(f"<!-- {name} [{b}]: {exc} -->", file=sys.stderr)
                    continue
                prev = out[name].get(b)
                out[name][b] = us if not isinstance(prev, float) else min(prev, us)
    return out


def table(times, backends):
    floor = times[TRIVIAL].get(backends[0])
    lines = ["| call | " + " | ".join(backends) + f" | {backends[0]} / trivial Function |",
             "|---|" + "---:|" * (len(backends) + 1)]
    for name, row in times.items():
        cells = [row.get(b, "") if isinstance(row.get(b, ""), str) else f"{row[b]:.0f}" for b in backends]
        first = row.get(backends[0])
        ratio = (f"{first / floor:.2f}" if isinstance(first, float) and isinstance(floor, float)
                 and not name.startswith("floor") else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def save(times, dev, reps, runs, results_dir):
    """Merge this measurement into ``<results_dir>/<card>.json``, one entry per commit (replaced)."""
    import datetime
    import json

    from report import card_name, git_commit, machine_info, versions

    path = os.path.join(results_dir, f"{card_name(dev)}.json")
    doc = json.load(open(path)) if os.path.exists(path) else {"card": card_name(dev), "entries": []}
    entry = dict(commit=git_commit(), date=datetime.date.today().isoformat(), machine=machine_info(dev),
                 versions=versions(dev), reps=reps, runs=runs, unit="us, least of the runs' medians",
                 times={k: {b: round(v, 1) if isinstance(v, float) else v for b, v in row.items()}
                        for k, row in times.items()})
    doc["entries"] = [e for e in doc["entries"] if e.get("commit") != entry["commit"]] + [entry]
    os.makedirs(results_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--runs", type=int, default=1, help="interleaved runs; each cell keeps the least median")
    ap.add_argument("--backends", nargs="+", help="backends to time (default: those that run on the device)")
    ap.add_argument("--save", metavar="DIR", nargs="?", const=DEFAULT_RESULTS,
                    help=f"also merge the measurement into DIR/<card>.json (default {DEFAULT_RESULTS})")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    # the interpreter is no measure of a Triton launch, so CPU rows leave Triton out
    wanted = ("cuda", "triton", "reference") if dev.type == "cuda" else ("cpu", "reference")
    backends = [b for b in (args.backends or wanted) if b in clustr_fast.backends()]
    print(f"host time of one call, median microseconds, {args.reps} calls, least of {args.runs} runs, "
          f"device {dev}, torch {torch.__version__}")
    times = measure(backends, dev, args.reps, args.runs)
    print(table(times, backends), flush=True)
    if args.save:
        print(f"saved: {save(times, dev, args.reps, args.runs, args.save)}")


if __name__ == "__main__":
    main()
