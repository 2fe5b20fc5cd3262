"""``clustr-fast``: the command line (train, eval, certify, bench, demo).

Each subcommand lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> int``; they are imported only when used. Errors the user can
fix (bad arguments, missing data files) print one line, not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("clustr_fast.train.commands", "train a model (ce, magnet, clustr, clustr-qtrades)"),
    "eval": ("clustr_fast.robust.commands_eval", "attack a checkpoint (PGD, margin, magnet, AutoAttack)"),
    "certify": ("clustr_fast.robust.commands_certify", "certified accuracy of a checkpoint (Theorem 1)"),
    "demo": ("clustr_fast.demo", "the synthetic experiment and digits, end to end, on the CPU"),
    "bench": ("clustr_fast.bench", "print the benchmark table of every op on this machine"),
}


from clustr_fast.train.errors import UserError  # noqa: E402  (one class, also under `python -m`)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clustr-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("clustr_fast"):
                p.set_defaults(_missing=f"`clustr-fast {name}` is not available in this build ({exc.name} is missing)")
                continue
            raise
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"clustr-fast: error: {args._missing}", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"clustr-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clustr-fast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
