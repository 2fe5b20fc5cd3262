"""``clustr-fast``: the command line (train, eval, certify, bench, demo).

Each subcommand lives in its own module of this package, which provides
``add_arguments(parser)`` and ``run(args) -> int``. Errors the user can fix (bad
arguments, missing data files: ``UserError`` and the library's ``ConfigError`` and
``DataError``) print one line, not a traceback. The library imports nothing from here.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ONE_LINE_ERRORS, UserError

COMMANDS = {
    "train": ("clustr_fast.cli.train", "train a model (ce, magnet, clustr, clustr-qtrades)"),
    "eval": ("clustr_fast.cli.eval", "attack a checkpoint (PGD, margin, magnet, AutoAttack)"),
    "certify": ("clustr_fast.cli.certify", "certified accuracy of a checkpoint (Theorem 1)"),
    "demo": ("clustr_fast.cli.demo", "the synthetic experiment and digits, end to end, on the CPU"),
    "bench": ("clustr_fast.cli.bench", "print the benchmark table of every op on this machine"),
}


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
    except ONE_LINE_ERRORS as exc:
        print(f"clustr-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clustr-fast: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "UserError", "build_parser", "main"]
