"""``clustr-fast certify CHECKPOINT``: certified accuracy (Theorem 1) on the test set; JSON + PNG.

``--radii 0.1,0.3,0.5`` also reports the certified accuracy at exactly those L2 radii (printed, and
``certified_at`` in certify.json), beside the curve."""
from __future__ import annotations

import os

from ..robust.evaluate import certificate_report
from ..robust.plots import plot_certified
from ..robust.sanity import certified_attack_check
from ._common import fraction, fraction_list, load_for_eval, positive_int, set_top_d, write_json
from ._common import on_every_rank
from .errors import UserError


def add_arguments(p):
    p.add_argument("checkpoint", help="checkpoint.pt written by `clustr-fast train`")
    p.add_argument("--lipschitz", type=fraction,
                   help="use this Lipschitz bound (default: product of per-layer spectral norms)")
    p.add_argument("--points", type=positive_int, default=50, help="radii on the curve (default 50)")
    p.add_argument("--radii", type=fraction_list, default=[],
                   help="L2 radii at which to report certified accuracy exactly, e.g. 0.1,0.3,0.5 (default: none)")
    p.add_argument("--attack-steps", type=positive_int, default=50,
                   help="L2 PGD steps of the certified-vs-attacked check (default 50)")
    p.add_argument("--test-size", type=positive_int, help="certify a random subset of this size")
    p.add_argument("--top-d", type=positive_int,
                   help="soft rule over the D nearest centers (default: the checkpoint's, set in training)")
    p.add_argument("--data-root", help="folder holding the CIFAR / SVHN files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="output folder (default: the checkpoint's folder)")


@on_every_rank
def run(args) -> int:
    if args.lipschitz is not None and args.lipschitz <= 0:
        raise UserError("--lipschitz must be > 0")
    classifier, config, test = load_for_eval(args.checkpoint, args.data_root, args.test_size, args.device)
    set_top_d(classifier, args.top_d)
    x, y = test.x.to(args.device), test.y.to(args.device)
    try:
        rep = certificate_report(classifier, x, y, points=args.points, attack_steps=args.attack_steps,
                                 lipschitz=args.lipschitz, at_radii=args.radii, seed=args.seed, world=args.world)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    rep.pop("_certificate")
    rep["check"] = certified_attack_check(rep["certified_attacked"], rep["certified_and_attacked"])
    if not args.world.main:               # under torchrun rank 0 writes and reports for every rank
        return 0 if rep["check"]["passed"] else 1
    rep.update(checkpoint=os.path.abspath(args.checkpoint), data=config["data"], method=config["method"],
               top_d=getattr(classifier.head, "top_d", None))
    out_dir = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    path = write_json(rep, os.path.join(out_dir, "certify.json"))
    curves = {"sound": (rep["radii"], rep["certified_acc"])}
    if rep["kind"] == "clusters":
        curves["paper shortcut (can overstate)"] = (rep["radii"], rep["certified_acc_paper"])
    plot_certified(curves, os.path.join(out_dir, "certify.png"), title=f"{config['data']} {config['method']}")
    print(f"{config['data']} {config['method']}: L <= {rep['lipschitz']:.4g} ({rep['kind']} certificate), "
          f"median certified radius {rep['median_radius']:.4g}, "
          f"certified-and-attacked {rep['certified_and_attacked']} of {rep['certified_attacked']}")
    for r, acc in rep["certified_at"]:
        print(f"  certified accuracy at r = {r:g}: {100 * acc:.1f}%")
    print(f"  wrote {path}")
    return 0 if rep["check"]["passed"] else 1
