"""``clustr-fast bench``: print the benchmark table (benchmarks/report.py) of a source checkout."""
from __future__ import annotations

import os
import runpy
import sys

from .errors import UserError

# The source checkout this package runs from, when installed in editable mode.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _benchmarks_dir(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [
        os.path.join(os.getcwd(), "benchmarks"),
        os.path.join(_CHECKOUT, "benchmarks"),
    ]
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "report.py")):
            return c
    return None


def add_arguments(parser) -> None:
    parser.add_argument("--benchmarks", help="the benchmarks/ folder of a clustr_fast checkout")
    parser.add_argument("--only", nargs="*", help="bench file name fragments (e.g. magnet kmeans)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--no-compiled", action="store_true", help="skip torch.compile providers")


def run(args) -> int:
    where = _benchmarks_dir(args.benchmarks)
    if where is None:
        raise UserError("benchmarks/report.py not found: run from a source checkout or pass --benchmarks DIR")
    argv = ["report.py"] + (["--only", *args.only] if args.only else []) + (["--json", args.json] if args.json else [])
    argv += ["--no-compiled"] if args.no_compiled else []
    old = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(os.path.join(where, "report.py"), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old
    return 0
