"""Sanity checks that run with every evaluation (each returns a JSON-ready dict with ``passed``).

- ``chance_check``: accuracy at the largest eps of the curve is at most the
  majority-class rate (what a constant input achieves) plus ``tol``;
- ``gradient_check``: the share of correctly classified samples whose input gradient
  is nonzero, per loss;
  the check passes when the margin loss gives a gradient for at least ``min_share``
  (a zero share under ``official-loss`` is the masking it diagnoses);
- ``strength_check``: the stronger attack (more steps and restarts) does not give
  a higher accuracy than the weaker one (beyond ``tol``);
- ``certified_attack_check``: no certified sample is flipped by an L2 attack within
  its certified radius (a count; must be 0).
"""
from __future__ import annotations

import torch

from .attacks import input_gradient_norms, robust_accuracy


def majority_rate(y, num_classes: int) -> float:
    """Largest class frequency in ``y``."""
    counts = torch.bincount(y.cpu(), minlength=num_classes)
    return float(counts.max()) / max(int(counts.sum()), 1)


def chance_check(curve, y, num_classes: int, tol: float = 0.05) -> dict:
    """``curve``: ``[[eps, acc], ...]`` sorted by eps."""
    last_eps, last_acc = curve[-1]
    chance = majority_rate(y, num_classes)
    return {"eps": last_eps, "accuracy": last_acc, "chance": chance, "tol": tol,
            "passed": bool(last_acc <= chance + tol)}


def gradient_check(model, x, y, losses, min_share: float = 0.95) -> dict:
    """Share of correctly classified samples (the ones an attack must move) with a
    nonzero input gradient under each of ``losses``."""
    model.eval()
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    shares = {}
    for loss in losses:
        if x.shape[0] == 0:
            shares[loss] = 1.0
            continue
        g = input_gradient_norms(model, x, y, loss=loss)
        shares[loss] = float((g > 0).float().mean())
    ref = shares.get("margin", shares.get("ce", 0.0))
    low = sorted(k for k, v in shares.items() if v < min_share)
    return {"nonzero_share": shares, "min_share": min_share, "below_min_share": low,
            "passed": bool(ref >= min_share)}


def strength_check(model, x, y, *, eps, steps, restarts, tol=None, **kw) -> dict:
    """Accuracy under (steps/2, 1 restart) vs (steps, restarts) vs (2 steps, restarts)."""
    n = x.shape[0]
    tol = max(0.01, 2.0 / max(n, 1)) if tol is None else tol
    runs = [(max(1, steps // 2), 1), (steps, restarts), (2 * steps, restarts)]
    accs = []
    for i, (s, r) in enumerate(runs):
        acc, _ = robust_accuracy(model, x, y, eps=eps, steps=s, restarts=r, seed=100 + i, **kw)
        accs.append({"steps": s, "restarts": r, "accuracy": acc})
    values = [a["accuracy"] for a in accs]
    passed = all(values[i + 1] <= values[i] + tol for i in range(len(values) - 1))
    return {"eps": eps, "runs": accs, "tol": tol, "passed": bool(passed)}


def certified_attack_check(attacked: int, flipped: int) -> dict:
    """Result of ``certify.attack_certified``: ``flipped`` must be 0."""
    return {"certified_attacked": attacked, "certified_and_attacked": flipped, "passed": flipped == 0}
