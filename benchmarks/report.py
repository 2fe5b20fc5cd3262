"""One-call benchmark table: every op x provider on this device, against the reference.

    python benchmarks/report.py [--json out.json] [--only magnet] [--skip "N=1000000,C=4096"] [--no-compiled]

Imports every ``bench_*.py`` beside it, runs the ``CASES`` meant for the device
(the GPU when there is one), times each available provider (wall clock around
a synchronised call, Python included; median of repeated runs) and prints one
markdown table: median ms, speed-up over the reference, achieved TFLOP/s or
TB/s and its share of the card's ceiling. Writes JSON too (``--json``, or
``$OUT/report.json`` when ``OUT`` is set).
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from common import CEILINGS, backend_scope, bench_device, provider_available, sync  # noqa: E402


def time_call(fn, device, *, min_reps=5, max_reps=50, budget_s=0.6):
    """Median wall seconds of ``fn()`` (synchronised before and after each call)."""
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_cases(only=None):
    cases = []
    for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if only and not any(o in name for o in only):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # report and go on: one broken file must not hide the rest
            print(f"<!-- could not import {name}: {type(exc).__name__}: {exc} -->")
            continue
        cases.extend(getattr(mod, "CASES", []))
    return cases




def run(cases, device, providers, *, verbose=True, skip=()):
    """Time every (case, provider); a pair whose ``"case.id[provider]"`` contains one of ``skip`` is left out."""
    rows = []
    for case in cases:
        if device.type not in case.devices:
            continue
        todo = [p for p in case.providers if not any(pat in f"{case.id}[{p}]" for pat in skip)]
        if not any(p in providers and provider_available(p, device) for p in todo):
            continue
        try:
            inputs = case.make(device)
        except Exception as exc:
            rows.append(dict(case=case.id, provider="-", error=f"inputs: {type(exc).__name__}: {exc}"))
            continue
        for prov in todo:
            if prov not in providers or not provider_available(prov, device):
                continue
            row = dict(case=case.id, op=case.op, mode=case.mode, shape=case.shape, provider=prov, note=case.note)
            try:
                with backend_scope(prov):
                    case.run(prov, inputs)  # warm-up: JIT compiles, caches
                    sync(device)
                    row["ms"] = 1e3 * time_call(lambda: case.run(prov, inputs), device)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                        base = torch.cuda.memory_allocated(device)
                        case.run(prov, inputs)
                        sync(device)
                        row["peak_extra_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                if verbose:
                    traceback.print_exc(limit=2)
            if "ms" in row:
                s = row["ms"] / 1e3
                if case.flops:
                    row["tflops"] = case.flops / s / 1e12
                if case.bytes:
                    row["tbps"] = case.bytes / s / 1e12
            rows.append(row)
            if verbose:
                print(f"  {case.id:<60s} {prov:<20s} {row.get('ms', float('nan')):10.3f} ms"
                      + (f"  ERROR {row['error']}" if "error" in row else ""), file=sys.stderr, flush=True)
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # speed-up over the case's reference provider
    ref = {r["case"]: r["ms"] for r in rows if r.get("provider") == "reference" and "ms" in r}
    for r in rows:
        if "ms" in r and r["case"] in ref:
            r["speedup"] = ref[r["case"]] / r["ms"]
    return rows


def markdown(rows, device):
    ceil = CEILINGS.get(device.type, {})
    lines = [
        "| op:mode | shape | provider | median ms | x reference | TFLOP/s | TB/s | peak extra MB | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('op', '')}:{r.get('mode', '')} | {r.get('shape', r['case'])} | "
                         f"{r['provider']} | error | | | | | {r['error']} |")
            continue
        tf = f"{r['tflops']:.3g}" if "tflops" in r else ""
        if tf and ceil:
            tf += f" ({100 * r['tflops'] / ceil['fp32_tflops']:.0f}% fp32)"
        tb = f"{r['tbps']:.3g}" if "tbps" in r else ""
        if tb and ceil:
            tb += f" ({100 * r['tbps'] / ceil['tbps']:.0f}%)"
        sp = f"{r['speedup']:.2f}" if "speedup" in r else ""
        pk = f"{r['peak_extra_mb']:.0f}" if "peak_extra_mb" in r else ""
        lines.append(f"| {r['op']}:{r['mode']} | {r['shape']} | {r['provider']} | {r['ms']:.3f} | {sp} | "
                     f"{tf} | {tb} | {pk} | {r.get('note', '')} |")
    return "\n".join(lines)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here as JSON")
    ap.add_argument("--only", nargs="*", help="bench file name fragments to include (e.g. magnet kmeans)")
    ap.add_argument("--no-compiled", action="store_true", help="skip the torch.compile provider (slow to compile)")
    ap.add_argument("--skip", nargs="*", default=[],
                    help='leave out the (case, provider) pairs whose "case_id[provider]" contains one of these, '
                         'e.g. "kmeans_plusplus" or "[reference]"')
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    device = bench_device()
    providers = {"reference", "compiled_reference", "cpu", "cuda", "triton", "auto"}
    if args.no_compiled:
        providers.discard("compiled_reference")
    cases = load_cases(args.only)
    t0 = time.time()
    rows = run(cases, device, providers, verbose=not args.quiet, skip=tuple(args.skip))
    header = (f"Device: {device_name(device)}; torch {torch.__version__}; "
              f"{time.strftime('%Y-%m-%d')}; {time.time() - t0:.0f} s")
    print(header)
    print()
    print(markdown(rows, device))
    out = args.json or (os.path.join(os.environ["OUT"], "report.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(dict(device=device_name(device), torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
