"""The reproduction table: collect the eval JSONs of scripts/reproduce_table1.sh beside the paper's
numbers (``clustr_fast.train.recipes``) into one JSON and one markdown table.

    python -m clustr_fast.train.table collect OUT      # OUT/table1.json, OUT/table1.md
    python -m clustr_fast.train.table finished CKPT    # exit 0 when CKPT is a finished run

Layout read under OUT: ``<recipe>/checkpoint.pt`` and ``<recipe>/<attack>/eval_<kind>.json`` for the
attacks ``pgd20``, ``pgd100``, ``adaptive`` and ``autoattack`` (each optional).
"""
from __future__ import annotations

import glob
import json
import os
import sys

from .recipes import RECIPES

# The table's columns: one eval folder per attack run of scripts/reproduce_table1.sh (runs, not attack
# names; the attacks themselves are registered in clustr_fast.robust.attacks).
RUNS = ("pgd20", "pgd100", "adaptive", "autoattack")


def _pct(v):
    return None if v is None else round(100 * float(v), 2)


def _read(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _last_test_acc(path):
    try:
        with open(path) as fh:
            lines = [ln for ln in fh if ln.strip()]
        return _pct(json.loads(lines[-1])["test_acc"]) if lines else None
    except (OSError, ValueError, KeyError):
        return None


def collect(out: str) -> dict:
    """One row per recipe with a checkpoint under ``out``: our accuracies (percent) and the paper's."""
    rows = []
    for name, recipe in RECIPES.items():
        folder = os.path.join(out, name)
        if not os.path.isdir(folder):
            continue
        row = {"recipe": name, "data": recipe.train["data"], "method": recipe.train["method"],
               "paper": dict(recipe.paper)}
        for attack in RUNS:
            found = sorted(glob.glob(os.path.join(folder, attack, "eval_*.json")))
            result = _read(found[0]) if found else None
            if result is None:
                continue
            row.setdefault("natural", _pct(result.get("clean_acc")))
            row[attack] = _pct(result.get("attack_acc"))
            if "worst_case_acc" in result and attack in ("pgd20", "pgd100"):
                row[f"{attack}_worst_case"] = _pct(result["worst_case_acc"])
            if attack == "pgd20" and "sanity" in result:
                row["sanity_passed"] = bool(result["sanity"].get("passed"))
        if "natural" not in row:        # a warm start is not attacked: its last test accuracy
            row["natural"] = _last_test_acc(os.path.join(folder, "metrics.jsonl"))
        rows.append(row)
    return {"out": os.path.abspath(out), "rows": rows}


def _cell(ours, paper=None):
    if ours is None:
        return "-" if paper is None else f"- ({paper:.2f})"
    return f"{ours:.2f}" if paper is None else f"{ours:.2f} ({paper:.2f})"


def markdown(table: dict) -> str:
    """The rows as a markdown table: ours, the paper's in parentheses."""
    head = ("| recipe | natural | PGD-20 | PGD-100 | worst case of CE and margin (PGD-100) | adaptive (Magnet) "
            "| AutoAttack | sanity |")
    lines = ["Accuracy in percent on the test set at eps = 8/255; the paper's number in parentheses.", "",
             head, "|" + "---|" * 8]
    for r in table["rows"]:
        p = r["paper"]
        sanity = {True: "passed", False: "FAILED"}.get(r.get("sanity_passed"), "-")
        lines.append(f"| {r['recipe']} | {_cell(r.get('natural'), p.get('natural'))} "
                     f"| {_cell(r.get('pgd20'), p.get('pgd20'))} | {_cell(r.get('pgd100'), p.get('pgd100'))} "
                     f"| {_cell(r.get('pgd100_worst_case', r.get('pgd20_worst_case')))} "
                     f"| {_cell(r.get('adaptive'), p.get('adaptive'))} | {_cell(r.get('autoattack'))} | {sanity} |")
    return "\n".join(lines) + "\n"


def finished(path: str) -> bool:
    """True when ``path`` is a checkpoint whose run has finished every epoch."""
    from .checkpoint import read_state

    try:
        return bool(read_state(path).get("finished"))
    except (OSError, ValueError):
        return False


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "finished":
        return 0 if finished(argv[1]) else 1
    if len(argv) == 2 and argv[0] == "collect":
        table = collect(argv[1])
        with open(os.path.join(argv[1], "table1.json"), "w") as fh:
            json.dump(table, fh, indent=2)
        text = markdown(table)
        with open(os.path.join(argv[1], "table1.md"), "w") as fh:
            fh.write(text)
        print(text, end="")
        return 0
    print("usage: python -m clustr_fast.train.table collect OUT | finished CHECKPOINT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
