"""PNG plots of accuracy-vs-eps and certified-accuracy curves (matplotlib, no display)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_eps_curves(curves: dict, path: str, *, chance: float | None = None, title: str = ""):
    """``curves``: ``{label: [[eps, acc], ...]}``; a dashed line at ``chance``."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, curve in curves.items():
        ax.plot([e for e, _ in curve], [a for _, a in curve], marker="o", ms=3, label=label)
    if chance is not None:
        ax.axhline(chance, ls="--", color="grey", lw=1, label="chance (majority class)")
    ax.set_xlabel("L-inf radius eps")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "accuracy under PGD vs eps")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_certified(curves: dict, path: str, *, title: str = ""):
    """``curves``: ``{label: (radii, certified_acc)}`` (L2 radius in input space).
    Labels ``"name (...)"`` share a colour per ``name``; ones mentioning "paper" are dashed."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    colours = {}
    for label, (radii, acc) in curves.items():
        group = label.split(" (")[0]
        colours.setdefault(group, f"C{len(colours)}")
        ax.plot(radii, acc, label=label, color=colours[group], ls="--" if "paper" in label else "-")
    ax.set_xlabel("L2 radius r (input space)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "certified accuracy (Theorem 1)")
    ax.legend(fontsize=8)
    return _save(fig, path)
