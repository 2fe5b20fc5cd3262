"""Per-kernel GPU time of benchmark cases: where a slow case spends its time.

    python tools/profile_kernels.py --only soft_cluster_logits:full [--providers triton cuda]

For each case whose id contains one of ``--only`` and each provider, runs the
case once to warm up, then ``--reps`` times under ``torch.profiler`` and prints
the kernels sorted by total device time (per run), with the host time of the
whole run beside them. A tool for reading, not a benchmark: the table in
``report.py`` is what speed claims quote.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, HERE)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from common import backend_scope, bench_device, provider_available, sync  # noqa: E402
from report import load_cases  # noqa: E402


def profile_case(case, provider, inputs, device, reps, rows):
    with backend_scope(provider):
        case.run(provider, inputs)
        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(reps):
                case.run(provider, inputs)
            sync(device)
            wall = (time.perf_counter() - t0) / reps
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in kernels) / reps
    print(f"\n### {case.id} [{provider}]: wall {1e3 * wall:.3f} ms/run, kernels {total / 1e3:.3f} ms/run")
    for e in kernels[:rows]:
        print(f"  {e.device_time_total / reps / 1e3:8.3f} ms  x{e.count // reps:<3d} {e.key[:110]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", required=True, help="substrings of case ids")
    ap.add_argument("--providers", nargs="+", default=["reference", "triton", "cuda"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=8)
    args = ap.parse_args()
    device = bench_device()
    for case in load_cases():
        if device.type not in case.devices or not any(o in case.id for o in args.only):
            continue
        inputs = case.make(device)
        for prov in args.providers:
            if prov in case.providers and provider_available(prov, device):
                try:
                    profile_case(case, prov, inputs, device, args.reps, args.rows)
                except Exception as exc:  # one failing provider must not hide the rest
                    print(f"\n### {case.id} [{prov}]: {type(exc).__name__}: {exc}")
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
