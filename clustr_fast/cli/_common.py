"""Shared pieces of the commands: argparse types (numbers like ``8/255``), loading a
checkpoint and its test set with one-line errors, and writing JSON."""
from __future__ import annotations

import argparse
import functools
import json
import math
import os

import torch

from .errors import UserError


def fraction(text: str) -> float:
    """``"0.03"`` or ``"8/255"`` -> float >= 0 (argparse type)."""
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 8/255") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def fraction_list(text: str) -> list:
    """``"0,2/255,8/255"`` -> list of floats."""
    return [fraction(t) for t in text.split(",") if t.strip()]


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def load_for_eval(path: str, data_root=None, test_size=None, device="cpu"):
    """``(classifier, config, test ArrayDataset)`` for a checkpoint; one-line errors."""
    from ..data import DataError, load_dataset
    from ..train import load_checkpoint

    try:
        classifier, config = load_checkpoint(path, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    try:
        _, test = load_dataset(config["data"], root=data_root or config.get("data_root"),
                               seed=config.get("seed", 0))
    except DataError as exc:
        raise UserError(f"{exc} (pass --data-root)") from None
    if test_size is not None and test_size < len(test):
        test = test.subset(test_size, config.get("seed", 0))
    return classifier, config, test


def set_top_d(classifier, top_d) -> None:
    """Classify with the ``top_d`` nearest centers (Eq. 4 over D of them); None keeps the
    checkpoint's. UserError for a cross-entropy model or more centers than it has."""
    if top_d is None:
        return
    if classifier.head is None:
        raise UserError("--top-d needs a cluster model (this checkpoint was trained with ce)")
    centers = classifier.head.centers.shape[0]
    if top_d > centers:
        raise UserError(f"--top-d {top_d} exceeds the {centers} cluster centers of this checkpoint")
    classifier.head.top_d = int(top_d)


def on_every_rank(run):
    """Decorate a command's ``run(args)`` to run on every rank under torchrun: the process group
    comes from the environment (``clustr_fast.train.distributed.setup``), ``args.device`` becomes
    this rank's device and ``args.world`` the World (one process without torchrun); the group
    is destroyed at the end."""
    @functools.wraps(run)
    def wrapper(args):
        from ..train.config import ConfigError
        from ..train.distributed import setup, teardown

        try:
            world, device = setup(args.device)
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        args.world, args.device = world, str(device)
        try:
            return run(args)
        finally:
            teardown(world)
    return wrapper


def own_rows(n: int, batch_size: int, world) -> int:
    """How many of ``n`` samples this rank scores when batches are sharded (a progress bar's total)."""
    from ..train.distributed import batches

    return sum(e - s for s, e in batches(n, batch_size, world))


def write_json(obj, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2, default=_default)
    return path


def _default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
