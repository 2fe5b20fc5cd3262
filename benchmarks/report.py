"""One-call benchmark table: every op x provider on this device, against the reference.

    python benchmarks/report.py [--json out.json] [--only magnet] [--skip "N=1000000,C=4096"] [--no-compiled]
    python benchmarks/report.py --save      # also keep the measurements: benchmarks/results/<card>.json
    python benchmarks/report.py --render [--readme-table PATH]   # benchmarks/RESULTS.md from those files

Imports every ``bench_*.py`` beside it, runs the ``CASES`` meant for the device
(the GPU when there is one), times each available provider (wall clock around
a synchronised call, Python included; median of repeated runs) and prints one
markdown table: median ms, speed-up over the reference, achieved TFLOP/s or
TB/s and its share of the card's ceiling. Writes JSON too (``--json``, or
``$OUT/report.json`` when ``OUT`` is set).

``--save`` merges the measurements into ``<results-dir>/<card>.json`` (card: a slug of the
machine, e.g. ``nvidia-h200`` or ``cpu-2core-amd-epyc``): a new measurement of a (case,
provider) replaces the stored one, the others stay, so each file holds the latest
measurement per case. ``--render`` reads every ``<results-dir>/*.json``, refreshes the
fields derived from the measurements (reference time, ratio, target, met) in place, and
writes ``RESULTS.md``: a summary for the README (one row per op and mode; also printed,
or written to ``--readme-table PATH``) and one table per card.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from common import (CEILINGS, COMPILED_PEER, OURS, PEERS, TARGETS, backend_scope, bench_device,  # noqa: E402
                    provider_available, sync)

ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
SCHEMA = 1


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




def run(cases, device, providers, *, verbose=True, skip=(), on_case=None):
    """Time every (case, provider); a pair whose ``"case.id[provider]"`` contains one of ``skip`` is left out.

    ``on_case(rows)``, when given, is called with the rows so far after each case (``--save`` keeps
    them as it goes, so a run cut short by a time limit still leaves what it measured).
    """
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
        if on_case is not None:
            on_case(rows)
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


# ---- results as data: benchmarks/results/<card>.json, rendered into RESULTS.md

PROVIDER_ORDER = ("reference", "compiled_reference", "cpu", "triton", "cuda", "auto")
# every stored entry: the measurement, then the fields derived from the card's entries and TARGETS
ENTRY_FIELDS = ("case", "op", "mode", "shape", "provider", "ms", "reference_ms", "ratio", "target", "met",
                "peak_extra_mb", "tflops", "tbps", "note", "date", "commit", "source")
REQUIRED = ("case", "op", "mode", "shape", "provider", "ms", "reference_ms", "ratio", "target", "met", "date")
CARD_FIELDS = ("schema", "card", "machine", "versions", "date", "commit", "cases")


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def _memory_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def card_name(device):
    """The card a measurement belongs to: the GPU's name, or the CPU's core count and model."""
    if device.type == "cuda":
        return slug(torch.cuda.get_device_name(device))
    return f"cpu-{_cores()}core-{slug(_cpu_model())}"


def machine_info(device):
    info = dict(card=card_name(device), kind=device.type, device=device_name(device), cpu=_cpu_model(),
                cores=_cores(), memory_gib=_memory_gib(), threads=torch.get_num_threads())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_mib=props.total_memory // 2**20, sm_count=props.multi_processor_count)
    return info


def versions(device):
    out = dict(python=platform.python_version(), torch=torch.__version__)
    if device.type == "cuda" and torch.version.cuda:
        out["cuda"] = torch.version.cuda
    for name, module in (("triton", "triton"), ("numpy", "numpy"), ("clustr_fast", "clustr_fast"),
                         ("scikit-learn", "sklearn"), ("faiss-cpu", "faiss")):
        try:
            out[name] = importlib.import_module(module).__version__
        except Exception:  # not installed, or broken: leave it out
            pass
    return out


def git_commit():
    """HEAD of the checkout (``$CLUSTR_FAST_COMMIT`` where the tree has no git metadata)."""
    if os.environ.get("CLUSTR_FAST_COMMIT"):
        return os.environ["CLUSTR_FAST_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _sig(x, digits=4):
    return float(f"{x:.{digits}g}")


def entries_from_rows(rows, *, date, commit):
    """The measured rows of ``run`` as stored entries (rows with an error are not kept)."""
    out = []
    for r in rows:
        if "ms" not in r:
            continue
        e = {k: r[k] for k in ("case", "op", "mode", "shape", "provider")}
        for k in ("ms", "peak_extra_mb", "tflops", "tbps"):
            if k in r:
                e[k] = _sig(r[k])
        if r.get("note"):
            e["note"] = r["note"]
        e["date"] = date
        if commit:
            e["commit"] = commit
        out.append(e)
    return out


def case_order():
    """Case id -> its position in the bench files, the order of every table."""
    order = {}
    for case in load_cases():
        order.setdefault(case.id, len(order))
    return order


def _sort_key(order):
    def key(e):
        case = e["case"]
        pos = order.get(case)
        if pos is None:  # a case this checkout does not define here (e.g. faiss absent): after its base case
            base = order.get(case.rsplit(",", 1)[0])
            pos = base + 0.5 if base is not None else float(len(order))
        prov = e["provider"]
        return (pos, case, PROVIDER_ORDER.index(prov) if prov in PROVIDER_ORDER else len(PROVIDER_ORDER), prov)
    return key


def derive(doc, order):
    """Refresh the fields derived from the measurements: reference_ms, ratio, target, met; sort."""
    kind = doc["machine"]["kind"]
    entries = doc["cases"]
    ref = {e["case"]: e["ms"] for e in entries if e["provider"] == "reference" and e.get("ms") is not None}
    targets = {t.case: t for t in TARGETS if t.device == kind}
    for e in entries:
        base = ref.get(e["case"])
        e["reference_ms"] = base
        e["ratio"] = round(base / e["ms"], 3) if base and e.get("ms") else None
        t = targets.get(e["case"]) if e["provider"] in OURS else None
        e["target"] = t.as_dict() if t else None
        e["met"] = t.met(e, ref) if t else None
    entries.sort(key=_sort_key(order))
    doc["cases"] = [{**{k: e[k] for k in ENTRY_FIELDS if k in e}, **e} for e in entries]
    return {**{k: doc[k] for k in CARD_FIELDS if k in doc}, **doc}


def merge(old, new):
    """``new`` over ``old``: one entry per (case, provider), the latest; machine fields merged."""
    if old is None:
        return new
    entries = {(e["case"], e["provider"]): e for e in old.get("cases", [])}
    for e in new["cases"]:
        entries[(e["case"], e["provider"])] = e
    out = {**old, **{k: v for k, v in new.items() if k != "cases"}}
    out["machine"] = {**old.get("machine", {}), **new["machine"]}
    out["cases"] = list(entries.values())
    return out


def read_card(path):
    with open(path) as f:
        return json.load(f)


def write_card(path, doc):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:  # whole or not at all, should the run be killed meanwhile
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


def save(rows, device, results_dir=RESULTS_DIR, card=None):
    """Merge ``rows`` into ``<results_dir>/<card>.json``; returns the path."""
    date = time.strftime("%Y-%m-%d", time.gmtime())
    commit = git_commit()
    machine = machine_info(device)
    if card:
        machine["card"] = card
    new = dict(schema=SCHEMA, card=machine["card"], machine=machine, versions=versions(device), date=date,
               commit=commit, cases=entries_from_rows(rows, date=date, commit=commit))
    path = os.path.join(results_dir, f"{new['card']}.json")
    old = read_card(path) if os.path.exists(path) else None
    write_card(path, derive(merge(old, new), case_order()))
    return path


# ---- rendering


def fmt_ms(x):
    if x is None:
        return ""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _cell(text):
    return str(text).replace("|", "\\|")


def _dates(entries):
    ds = sorted({e["date"] for e in entries if e.get("date")})
    return ds[0] if len(ds) == 1 else f"{ds[0]} to {ds[-1]}" if ds else "undated"


def _met(e):
    if not e.get("target"):
        return ""
    return {True: "yes", False: "no"}.get(e.get("met"), "?")


def card_table(doc):
    """One card's section of RESULTS.md."""
    m, entries = doc["machine"], doc["cases"]
    about = [m.get("device") or doc["card"]]
    if m.get("gpu_memory_mib"):
        about.append(f"{m['gpu_memory_mib']} MiB")
    if m.get("driver"):
        about.append(f"driver {m['driver']}")
    if m.get("cores"):
        about.append(f"host {m['cores']} cores" if m["kind"] == "cuda" else f"{m['cores']} cores")
    if m.get("cpu") and m["kind"] == "cpu":
        about.append(m["cpu"])
    if m.get("memory_gib"):
        about.append(f"{m['memory_gib']:g} GiB")
    vers = ", ".join(f"{k} {v}" for k, v in doc.get("versions", {}).items())
    commits = sorted({e["commit"][:7] for e in entries if e.get("commit")})
    converted = sum(1 for e in entries if e.get("source"))
    lines = [f"## {doc['card']}", "",
             f"Machine: {'; '.join(about)}. Measured {_dates(entries)}; {len(entries)} entries.",
             f"Software: {vers or 'not recorded'}."]
    if commits:
        lines.append(f"Commits: {', '.join(commits)}.")
    if converted:
        lines.append(f"{converted} entries were converted from the measurement log kept before these files "
                     "(their `source` field).")
    many_dates = len({e.get("date") for e in entries}) > 1
    head = ["op:mode", "case", "provider", "reference ms", "ms", "x reference", "target", "met", "note"]
    if many_dates:
        head.insert(-1, "date")
    lines += ["", "| " + " | ".join(head) + " |",
              "|" + "|".join("---:" if h in ("reference ms", "ms", "x reference") else "---" for h in head) + "|"]
    for e in entries:
        cells = [f"{e['op']}:{e['mode']}", e["shape"], e["provider"], fmt_ms(e.get("reference_ms")),
                 fmt_ms(e.get("ms")), f"{e['ratio']:.2f}" if e.get("ratio") else "",
                 (e.get("target") or {}).get("text", ""), _met(e), e.get("note", "")]
        if many_dates:
            cells.insert(-1, e.get("date", ""))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def display_op(e):
    """The public op a case measures (the batch form of the Magnet loss is its own function)."""
    return "magnet_loss_batch" if e["op"] == "magnet_loss" and e["shape"].startswith("batch") else e["op"]


def _peer_suffix(case_id):
    parts = case_id.rsplit(",", 1)
    return parts[1] if len(parts) == 2 and parts[1] in PEERS else None


def _headline(entries):
    """The case that stands for an op and mode on a card: the first (bench order) with a time or
    speed-up target, else with a reference time, else with any of our providers measured."""
    by_case = {}
    for e in entries:
        by_case.setdefault(e["case"], []).append(e)
    cand = [c for c, es in by_case.items()
            if _peer_suffix(c) is None and any(e["provider"] in OURS and e.get("ms") for e in es)]
    with_target = [c for c in cand if any((e.get("target") or {}).keys() & {"ms", "ratio"} for e in by_case[c])]
    with_ref = [c for c in cand if any(e["provider"] == "reference" for e in by_case[c])]
    pick = (with_target or with_ref or cand or [None])[0]
    return pick, by_case


def summary_cell(doc, entries, *, dated=False):
    case, by_case = _headline(entries)
    if case is None:
        return ""
    all_by_case = {}
    for e in doc["cases"]:
        all_by_case.setdefault(e["case"], []).append(e)
    best = min((e for e in by_case[case] if e["provider"] in OURS and e.get("ms")), key=lambda e: e["ms"])
    peers = [(e["ms"], COMPILED_PEER) for e in by_case[case] if e["provider"] == "compiled_reference" and e.get("ms")]
    for suffix, name in PEERS.items():
        peers += [(e["ms"], name) for e in all_by_case.get(f"{case},{suffix}", [])
                  if e["provider"] == "reference" and e.get("ms")]
    parts = [f"{fmt_ms(best['ms'])} ms ({best['provider']})",
             f"{best['reference_ms'] / best['ms']:.2f}x reference" if best.get("reference_ms") else "no reference"]
    if peers:
        peer_ms, peer = min(peers)
        parts.append(f"{peer_ms / best['ms']:.2f}x {peer}")
    if best.get("target"):
        parts.append(f"target {best['target']['text']}: {_met(best)}")
    shape = case.split(":", 2)[2]
    return f"`{shape}`: " + ", ".join(parts) + (f" ({best.get('date', 'undated')})" if dated else "")


def summary(cards):
    """Markdown: one row per op and mode; per card our best time, its speed-up over the reference and
    over the fastest peer measured (torch.compile, torch.cdist, scikit-learn, faiss-cpu), and the target."""
    groups = {}
    for doc in cards:
        for e in doc["cases"]:
            if _peer_suffix(e["case"]) is None:
                key = (display_op(e), e["mode"])
                groups.setdefault(key, {}).setdefault(doc["card"], []).append(e)
    head = ["op", "mode"] + [f"{doc['card']} ({_dates(doc['cases'])})" for doc in cards]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    modes = ("fwd", "bwd", "full")
    dated = {doc["card"]: len({e.get("date") for e in doc["cases"]}) > 1 for doc in cards}
    for (op, mode), g in sorted(groups.items(), key=lambda kv: (kv[0][0], modes.index(kv[0][1])
                                                                   if kv[0][1] in modes else len(modes))):
        cells = [summary_cell(doc, g.get(doc["card"], []), dated=dated[doc["card"]]) for doc in cards]
        if any(cells):
            lines.append("| " + " | ".join(_cell(c) for c in [op, mode] + cells) + " |")
    return "\n".join(lines)


HEADER = """# Benchmark results

Generated by `python benchmarks/report.py --render` from `benchmarks/results/<card>.json`, one
file per machine ("card"); do not edit by hand. Each file keeps the latest measurement of every
(case, provider) on its card, with the date, the commit where known, the software versions and
the machine. To add measurements, run `python benchmarks/report.py --save` (with `--only` /
`--skip` for a subset; it merges into the card's file), then `python benchmarks/report.py --render`.
`benchmarks/gpu_check.sh` saves the GPU card's file.

Times are medians of synchronised wall-clock calls, Python included, in ms. "x reference" is the
time of the case's `reference` provider (the plain-PyTorch `clustr_fast.reference`; in a case
named after a peer, `,cdist` `,sklearn` `,faiss`, that peer) over the row's time. Targets
(`TARGETS` in `benchmarks/common.py`) hold our providers (cpu, triton, cuda, auto): a time, a
speed-up over the reference or a named peer, or the extra GPU memory of a call.
"""


def render(results_dir=RESULTS_DIR, out=os.path.join(HERE, "RESULTS.md"), readme_table=None):
    """Refresh the card files' derived fields, write RESULTS.md; returns the README summary table."""
    order = case_order()
    cards = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        doc = derive(read_card(path), order)
        write_card(path, doc)
        cards.append(doc)
    table = summary(cards)
    parts = [HEADER, "## Summary", "",
             "Per op and mode (fwd: the forward alone; full: forward and backward, or the whole fit for "
             "the k-means ops), on each card: our fastest provider on the case that carries the target "
             "(else the first case with a reference time), its speed-up over the reference and over the "
             "fastest peer measured, and the target.", "", table]
    parts += ["\n" + card_table(doc) for doc in cards]
    with open(out, "w") as f:
        f.write("\n".join(parts).rstrip() + "\n")
    if readme_table:
        with open(readme_table, "w") as f:
            f.write(table + "\n")
    return table

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here as JSON")
    ap.add_argument("--only", nargs="*", help="bench file name fragments to include (e.g. magnet kmeans)")
    ap.add_argument("--no-compiled", action="store_true", help="skip the torch.compile provider (slow to compile)")
    ap.add_argument("--skip", nargs="*", default=[],
                    help='leave out the (case, provider) pairs whose "case_id[provider]" contains one of these, '
                         'e.g. "kmeans_plusplus" or "[reference]"')
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--save", action="store_true",
                    help="merge the measurements into <results-dir>/<card>.json (latest per case and provider)")
    ap.add_argument("--render", action="store_true",
                    help="write RESULTS.md from every <results-dir>/*.json (measures nothing unless --save)")
    ap.add_argument("--results-dir", default=RESULTS_DIR, help="where the card files are (default: %(default)s)")
    ap.add_argument("--card", help="the card name to save under (default: a slug of the GPU or CPU model)")
    ap.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"),
                    help="the file --render writes (default: %(default)s)")
    ap.add_argument("--readme-table", metavar="PATH",
                    help="with --render: write the summary table for the README here (else it is printed)")
    args = ap.parse_args(argv)
    if args.render and not args.save:
        return _render(args)
    device = bench_device()
    providers = {"reference", "compiled_reference", "cpu", "cuda", "triton", "auto"}
    if args.no_compiled:
        providers.discard("compiled_reference")
    cases = load_cases(args.only)
    t0 = time.time()
    on_case = (lambda so_far: save(so_far, device, args.results_dir, args.card)) if args.save else None
    rows = run(cases, device, providers, verbose=not args.quiet, skip=tuple(args.skip), on_case=on_case)
    header = (f"Device: {device_name(device)}; torch {torch.__version__}; "
              f"{time.strftime('%Y-%m-%d')}; {time.time() - t0:.0f} s")
    print(header)
    print()
    print(markdown(rows, device))
    out = args.json or (os.path.join(os.environ["OUT"], "report.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(dict(device=device_name(device), torch=torch.__version__, rows=rows), f, indent=1)
    if args.save:
        print(f"\nsaved: {save(rows, device, args.results_dir, args.card)}")
    if args.render:
        return _render(args)
    return 0


def _render(args):
    table = render(args.results_dir, args.results_md, args.readme_table)
    print(f"wrote {args.results_md}")
    if args.readme_table:
        print(f"wrote {args.readme_table}")
    else:
        print()
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
