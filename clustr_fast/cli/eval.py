"""``clustr-fast eval CHECKPOINT``: attack a checkpoint on its test set; JSON + PNG."""
from __future__ import annotations

import os

from tqdm.auto import tqdm

from ..robust.attacks import ATTACKS
from ..robust.evaluate import DEFAULT_TARGETS, full_evaluation
from ..robust.plots import plot_eps_curves
from ..robust.sanity import majority_rate
from ..train import recipes
from ._common import fraction, fraction_list, load_for_eval, positive_int, set_top_d, write_json
from ._common import on_every_rank, own_rows
from .errors import UserError

DEFAULT_CURVE = "0,1/255,2/255,4/255,8/255,16/255,32/255,64/255,0.5"
# The attack settings a recipe may set; the values used when neither a flag nor a recipe does.
ATTACK_DEFAULTS = {"eps": 8 / 255, "steps": 20, "restarts": 10, "step_size": None, "top_d": None, "norm": "linf"}
L2_CURVE = "0,0.25,0.5,1,1.5,2,3,4,6"


def add_arguments(p):
    p.add_argument("checkpoint", nargs="?", help="checkpoint.pt written by `clustr-fast train`")
    p.add_argument("--recipe", metavar="NAME",
                   help="attack as the paper did for this recipe (eps, steps, restarts, step, top-D; flags "
                        "given explicitly override it); 'list' prints the recipes")
    p.add_argument("--attack", choices=tuple(ATTACKS), default="pgd",
                   help="pgd (CE on log-space logits), margin (DLR), magnet (adaptive), "
                        "official-loss (masking diagnostic only), autoattack (needs torchattacks)")
    p.add_argument("--norm", choices=("linf", "l2"), help="norm of the attacks and the eps curve (default linf)")
    p.add_argument("--eps", type=fraction, help="attack radius, e.g. 8/255 (default) or 1.58 with --norm l2")
    p.add_argument("--steps", type=positive_int, help="PGD steps (default 20)")
    p.add_argument("--restarts", type=positive_int, help="random restarts (default 10)")
    p.add_argument("--step-size", type=fraction, help="PGD step (default eps/4; the paper's recipes: 2/255)")
    p.add_argument("--top-d", type=positive_int,
                   help="classify with the D nearest centers (default: the checkpoint's, set in training)")
    p.add_argument("--targets", type=int, default=DEFAULT_TARGETS,
                   help=f"margin attack: target each of the top-N other classes (default {DEFAULT_TARGETS}; "
                        "0: untargeted)")
    p.add_argument("--eps-curve", type=fraction_list,
                   help=f"radii of the accuracy-vs-eps curve (default {DEFAULT_CURVE}, with --norm l2 "
                        f"{L2_CURVE}; '' to skip)")
    p.add_argument("--radii", type=fraction_list, default=[],
                   help="L2 radii at which the certified accuracy is also reported, e.g. 0.1,0.3,0.5,1,1.58")
    p.add_argument("--no-official", action="store_true", help="skip the official-loss diagnostic")
    p.add_argument("--no-certify", action="store_true", help="skip certificates")
    p.add_argument("--no-sanity", action="store_true", help="skip the sanity checks")
    p.add_argument("--test-size", type=positive_int, help="evaluate a random subset of this size")
    p.add_argument("--data-root", help="folder holding the CIFAR / SVHN files")
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="output folder (default: the checkpoint's folder)")


def _margin_kind(result) -> str:
    t = result.get("targets", 0)
    return f"top-{t} targets" if t else "DLR, untargeted"


def _attack_settings(args) -> None:
    """Fill the attack settings not given as flags from ``--recipe``, else ``ATTACK_DEFAULTS``."""
    base = dict(ATTACK_DEFAULTS)
    if args.recipe is not None:
        try:
            base.update(recipes.get(args.recipe).eval)
        except recipes.RecipeError as exc:
            raise UserError(f"--recipe: {exc}") from None
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.eps_curve is None:
        args.eps_curve = fraction_list(L2_CURVE if args.norm == "l2" else DEFAULT_CURVE)


@on_every_rank
def run(args) -> int:
    if args.recipe == "list":
        print(recipes.describe_all())
        return 0
    if args.checkpoint is None:
        raise UserError("give the checkpoint to evaluate (clustr-fast eval CHECKPOINT)")
    _attack_settings(args)
    if args.attack == "autoattack":
        try:
            import torchattacks  # noqa: F401
        except ImportError:
            raise UserError("--attack autoattack needs torchattacks: pip install 'clustr_fast[robust]'") from None
    classifier, config, test = load_for_eval(args.checkpoint, args.data_root, args.test_size, args.device)
    if args.attack == "magnet" and classifier.head is None:
        raise UserError("--attack magnet needs a cluster model (this checkpoint was trained with ce)")
    set_top_d(classifier, args.top_d)
    x, y = test.x.to(args.device), test.y.to(args.device)
    out_dir = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    runs = 1 + (args.attack != "margin") + (0 if args.no_official else 1) + len(args.eps_curve)
    with tqdm(total=runs * own_rows(len(test), args.batch_size, args.world), desc=f"eval {args.attack}", unit="img",
              disable=not args.world.main) as bar:
        result = full_evaluation(
            classifier, x, y, num_classes=test.num_classes, eps=args.eps, attack=args.attack,
            steps=args.steps, restarts=args.restarts, step_size=args.step_size, targets=args.targets,
            eps_values=args.eps_curve, official=not args.no_official, certificate=not args.no_certify,
            checks=not args.no_sanity, seed=args.seed, batch_size=args.batch_size, progress=bar.update,
            world=args.world, norm=args.norm, certified_radii=args.radii)
    if not args.world.main:               # under torchrun rank 0 writes and reports for every rank
        return 0 if result.get("sanity", {}).get("passed", True) else 1
    result.update(checkpoint=os.path.abspath(args.checkpoint), data=config["data"], method=config["method"],
                  step_size=args.step_size if args.step_size is not None else args.eps / 4,
                  top_d=getattr(classifier.head, "top_d", None), recipe=args.recipe)
    suffix = "_l2" if args.norm == "l2" else ""
    path = write_json(result, os.path.join(out_dir, f"eval_{args.attack}{suffix}.json"))
    if "eps_curve" in result:
        plot_eps_curves({f"{config['method']} (PGD-{min(args.steps, 20)}, CE)": result["eps_curve"]},
                        os.path.join(out_dir, f"eval_{args.attack}{suffix}_eps_curve.png"),
                        chance=majority_rate(y, test.num_classes), title=f"{config['data']}: accuracy vs eps")
    print(f"{config['data']} {config['method']}: clean {100 * result['clean_acc']:.2f}%  "
          f"{args.attack} {args.norm} eps={args.eps:.4g} ({args.steps} steps, {args.restarts} restarts) "
          f"{100 * result['attack_acc']:.2f}%")
    if "margin_acc" in result:
        print(f"  margin ({_margin_kind(result)}) {100 * result['margin_acc']:.2f}%, worst case of both "
              f"{100 * result['worst_case_acc']:.2f}%")
    if "official_loss_acc" in result:
        print(f"  official-loss diagnostic (not a robustness number): {100 * result['official_loss_acc']:.2f}%")
    if "sanity" in result:
        s = result["sanity"]
        print("  sanity: " + ", ".join(f"{k} {'ok' if v['passed'] else 'FAILED'}"
                                       for k, v in s.items() if k != "passed"))
    print(f"  wrote {path}")
    return 0 if result.get("sanity", {}).get("passed", True) else 1
