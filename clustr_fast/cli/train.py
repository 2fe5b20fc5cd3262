"""``clustr-fast train``: train a model and save its checkpoint and per-epoch metrics."""
from __future__ import annotations

import argparse
import re
import sys

from tqdm.auto import tqdm

from ..data import DATASETS, DataError
from ..models import MODELS
from ..train.config import BATCH_VARIANCES, METHODS, ConfigError, TrainConfig
from ..train import recipes
from ..train.config import QTRADES_CENTERS
from ..train.fit import fit
from .errors import UserError

# TrainConfig fields set from flags of the same name (underscores as dashes).
FIELDS = ("data", "method", "model", "epochs_ce", "epochs_magnet", "k", "alpha", "lr", "lr_ce", "m", "d",
          "top_d", "qtrades_lambda", "qtrades_eps", "qtrades_step", "batch_size", "weight_decay", "augment",
          "kmeans_iters", "seed", "device", "data_root", "out_dir", "max_steps", "train_size", "test_size",
          "dry_run", "batch_variance", "kmeans_n_init", "qtrades_centers", "init_from", "magnet_lr_milestones",
          "margin_weight", "margin_radius")


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Argument errors print one line (no usage block) and exit with status 2."""
    def error(message):
        parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
    parser.error = error


def add_arguments(p: argparse.ArgumentParser) -> None:
    _one_line_errors(p)
    p.add_argument("--data", choices=DATASETS, help="data set (a dry run defaults to cifar10)")
    p.add_argument("--recipe", metavar="NAME",
                   help="a run of the paper by name, every setting from the paper or its official code "
                        "(flags given explicitly override it); 'list' prints them")
    p.add_argument("--method", choices=METHODS,
                   help="ce; magnet (from random init); clustr (CE warm start + Magnet, default); clustr-qtrades")
    p.add_argument("--model", choices=tuple(MODELS), help="default: mlp (2-D), cnn (digits), resnet18 (32x32)")
    p.add_argument("--epochs-ce", type=int, help="cross-entropy (warm start) epochs")
    p.add_argument("--epochs-magnet", type=int, help="Magnet-loss epochs")
    p.add_argument("-k", "--k", type=int, help="clusters per class (default 2)")
    p.add_argument("--alpha", type=float, help="Magnet margin alpha (default 12.5 or the paper's per set)")
    p.add_argument("--lr", type=float, help="learning rate of the Magnet phase (Adam)")
    p.add_argument("--lr-ce", type=float, help="learning rate of the cross-entropy phase (Adam, x0.1 at 1/3, 2/3)")
    # the long spellings pass through torchrun, whose parser takes --m and --d for its own flags
    p.add_argument("--m", "--clusters-per-batch", dest="m", type=int,
                   help="clusters per neighbourhood batch (default 12)")
    p.add_argument("--d", "--samples-per-cluster", dest="d", type=int,
                   help="samples per cluster in a batch (default 20)")
    p.add_argument("--top-d", type=int, help="nearest centers used at prediction (default: all)")
    p.add_argument("--qtrades-lambda", type=float, help="weight of the QTRADES term")
    p.add_argument("--qtrades-eps", type=float, help="QTRADES L-inf radius (pixel space)")
    p.add_argument("--qtrades-step", type=float, help="QTRADES step size (default: eps)")
    p.add_argument("--batch-size", type=int, help="cross-entropy batch size")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + flip (default: on for CIFAR)")
    p.add_argument("--kmeans-iters", type=int, help="Lloyd iterations of the per-epoch refresh (default 20)")
    p.add_argument("--kmeans-n-init", type=int, help="k-means++ seedings per class at every refresh, the fit of "
                                                     "least inertia kept (default 1)")
    p.add_argument("--qtrades-centers", choices=QTRADES_CENTERS,
                   help="QTRADES p(.) against the last refresh's centers, training sigma^2, every class and "
                        "--top-d nearest (global, as the official code) or the batch's cluster means (batch, default)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start the Magnet phase from this finished warm-start (--method ce) checkpoint: "
                        "its network, no cross-entropy epochs")
    p.add_argument("--magnet-lr-milestones", type=_int_list, metavar="E1,E2",
                   help="Magnet epochs after which the lr is multiplied by 0.1 (default: none)")
    p.add_argument("--margin-weight", type=float,
                   help="weight of the certified-margin term added to the Magnet loss (default 0: none)")
    p.add_argument("--margin-radius", type=float,
                   help="certified radius the margin term asks of every sample, input units (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--data-root", help="folder holding the CIFAR / SVHN files")
    p.add_argument("--out-dir", help="folder for checkpoint.pt, metrics.jsonl and metrics.csv")
    p.add_argument("--max-steps", type=int, help="cap on the steps of every epoch")
    p.add_argument("--train-size", type=int, help="train on a random subset of this size")
    p.add_argument("--test-size", type=int, help="evaluate on a random subset of this size")
    p.add_argument("--dry-run", action="store_true",
                   help="random 32x32 images of the data set's size (cifar10 by default): time an epoch")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out-dir holds a checkpoint")
    p.add_argument("--batch-variance", choices=BATCH_VARIANCES, default="local",
                   help="under torchrun: sigma^2 of the Magnet loss from each rank's batch (local, default) "
                        "or from every rank's batches (global)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")


def _int_list(text: str) -> tuple:
    """``"30,60"`` -> ``(30, 60)`` (argparse type)."""
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _flag_names(message: str) -> str:
    """``TrainConfig: `epochs_ce` ...`` -> ``--epochs-ce ...`` for the command line."""
    message = re.sub(r"^(TrainConfig|fit): ", "", message)
    return re.sub(r"`([a-z_]+)`", lambda m: "--" + m.group(1).replace("_", "-")
                  if m.group(1) in FIELDS else m.group(0), message)


def _summary(r: dict) -> str:
    total = r["epochs_total"]
    line = (f"{r['phase']:>6} {r['epoch']:>3}/{total:<3} loss {r['train_loss']:.4f}  "
            f"test acc {100 * r['test_acc']:.2f}%  {r['epoch_s']:.2f} s ({r['steps']} steps, "
            f"{1000 * r.get('step_s', 0.0):.1f} ms/step)")
    if r["phase"] == "magnet":
        line += (f"  refresh+loss {100 * r['cluster_frac']:.1f}% (kmeans {r['kmeans_s']:.2f} s, "
                 f"loss {r['loss_s']:.2f} s, embed {r['embed_s']:.2f} s)")
    if "full_epoch_s_est" in r:
        line += f"  full epoch ~{r['full_epoch_s_est']:.1f} s"
    return line


def config_from_args(args) -> TrainConfig:
    # flags not given are None: the recipe's value, else TrainConfig's default
    values = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
    progress = not args.quiet and sys.stderr.isatty()       # fit shows bars on rank 0 only
    if args.recipe is not None:
        try:
            recipe = recipes.get(args.recipe)
        except recipes.RecipeError as exc:
            raise UserError(f"--recipe: {exc}") from None
        return recipe.config(**values, progress=progress, resume=not args.no_resume)
    if values.get("data") is None:
        if not args.dry_run:
            raise UserError("--data is required (one of " + ", ".join(DATASETS) + ")")
        values["data"] = "cifar10"
    return TrainConfig(**values, progress=progress, resume=not args.no_resume)


def run(args) -> int:
    if args.recipe == "list":
        print(recipes.describe_all())
        return 0
    config = config_from_args(args)
    try:
        cfg = config.resolved()
    except ConfigError as exc:
        raise UserError(_flag_names(str(exc))) from None
    epochs = {"ce": cfg.epochs_ce, "magnet": cfg.epochs_magnet}

    def report(record):
        if not args.quiet:
            tqdm.write(_summary({**record, "epochs_total": epochs[record["phase"]]}), file=sys.stdout)

    try:
        result = fit(config, callback=report)
    except (ConfigError, DataError) as exc:
        raise UserError(_flag_names(str(exc))) from None
    if result.rank != 0:                    # under torchrun rank 0 reports for every rank
        return 0
    last = result.history[-1] if result.history else {}
    data = f"synthetic {cfg.data}" if cfg.dry_run else cfg.data
    acc = f"test acc {100 * last['test_acc']:.2f}%" if last else "nothing left to train"
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    print(f"trained {cfg.method} on {data} ({cfg.model}): {acc} in {result.seconds:.1f} s{where}")
    return 0
