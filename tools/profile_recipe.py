"""Where the time of a recipe's training goes: the share of our ops (``torch.ops.clustr_fast.*``)
against the backbone, from torch.profiler over a few steps of one epoch plus its cluster refresh.

    python tools/profile_recipe.py fmnist-clustr-lip [--steps 30] [--train-size 20000] [--threads 2]

Prints the top operators by self CPU time and the share of the clustr_fast ops (the Magnet loss,
cluster means, pairwise distances, k-means inside the refresh); ``--save PATH`` writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from clustr_fast.train import fit
from clustr_fast.train.recipes import get


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--steps", type=int, default=30, help="training steps of the profiled epoch")
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", help="write the profile summary here (JSON)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = get(args.recipe)
    magnet = recipe.train["method"] != "ce"
    cfg = recipe.config(epochs_magnet=1 if magnet else 0, epochs_ce=0 if magnet else 1, max_steps=args.steps,
                        train_size=args.train_size, test_size=1000, magnet_lr_milestones=(),
                        method="magnet" if magnet else "ce")
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fit(cfg)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ours = sum(e.self_cpu_time_total for e in events if e.key.startswith("clustr_fast::"))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    summary = {"recipe": args.recipe, "steps": args.steps, "train_size": args.train_size, "threads": args.threads,
               "wall_s": wall, "ops_share": ours / total if total else 0.0,
               "record": {k: v for k, v in result.history[-1].items() if k.endswith("_s") or k == "cluster_frac"},
               "top": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top]}
    for row in summary["top"]:
        print(f"{row['op']:48s} {row['self_cpu_ms']:10.1f} ms  {row['calls']:6d} calls")
    print(f"clustr_fast ops: {100 * summary['ops_share']:.1f}% of the self CPU time ({wall:.1f} s wall)")
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
