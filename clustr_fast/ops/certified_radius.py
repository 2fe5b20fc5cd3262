"""``certified_radius``: the l2 robustness radius of the nearest-center classifier
(ClusTR Theorem 1) as an op.

With ``d_j = ||f - mu_j||^2``, ``mu_1`` the nearest center (ties: lower index) and
``g_j = ||mu_j - mu_1||``:

    r_j    = (d_j - d_1) / (2 L g_j)          (0 when g_j = 0)
    sound: r = min over centers j of another class than mu_1 of r_j
    paper: r = r_{j2}, j2 = the nearest center of another class (ties: lower index)

No other-class center gives ``+inf``. Shapes: feats [N,d], centers [C,d],
center_classes [C] -> [N] (float32; float64 for float64 inputs). The fused kernels
compute the distances of one row by direct differences (equal centers give equal
distances and a zero gap), find mu_1 and reduce over the centers without an [N,C]
buffer; the center-to-center gaps ``[C,C]`` are computed once per call. No gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend
from .._validate import RADIUS_MODES, acc_dtype, check_certified_radius, int64_ids
from ..reference import certified_radius as _reference
from ._library import define

def _reference_impl(feats, centers, classes, lipschitz, mode):
    return _reference(feats, centers, classes, lipschitz, mode=RADIUS_MODES[mode])


def _fake(feats, centers, center_classes, lipschitz, mode):
    torch._check(feats.dim() == 2 and centers.dim() == 2 and feats.shape[1] == centers.shape[1],
                 lambda: "certified_radius: feats [N,d] and centers [C,d] with the same d")
    return feats.new_empty((feats.shape[0],), dtype=acc_dtype(feats.dtype))


certified_radius_op = define(
    "certified_radius(Tensor feats, Tensor centers, Tensor center_classes, float lipschitz, int mode) -> Tensor",
    _fake, reference=_reference_impl, triton=("certified_radius", "certified_radius"))


def certified_radius(feats: Tensor, centers: Tensor, center_classes: Tensor, lipschitz, *,
                     mode: str = "sound") -> Tensor:
    """Certified l2 radius ``[N]`` of the nearest-center classifier for each row of ``feats``.

    ``feats [N,d]`` are the features ``f(x)`` of an ``L``-Lipschitz map (``lipschitz`` = L > 0,
    float or 0-d tensor), ``centers [C,d]`` with ``center_classes [C]``. With ``mu_1`` the
    nearest center (ties: lower index) and ``d_j = ||f - mu_j||^2``:

    - ``mode="sound"`` (default): ``min over centers j of another class of
      (d_j - d_1) / (2 L ||mu_j - mu_1||)``, the distance (over L) from ``f`` to the nearest
      bisector between ``mu_1`` and an other-class center. Every input perturbation shorter
      than it keeps ``mu_1``'s class the nearest-center prediction: this is what Theorem 1
      guarantees for the nearest-center classifier once it is applied to every pair
      ``(mu_1, mu_j)``, and it is tight (a perturbation along the binding bisector's normal
      crosses it when the map is an isometry).
    - ``mode="paper"``: the paper's shortcut, the same expression for ``mu_2`` = the nearest
      other-class center only. It overstates the radius whenever a farther other-class
      center has a closer bisector (a center that is farther from ``f`` but lies in a
      direction closer to ``mu_1``, so ``(d_j - d_1) / ||mu_j - mu_1||`` is smaller); a
      perturbation shorter than the paper radius can then change the class. Use it only to
      reproduce the paper's numbers.

    No other-class center: ``+inf``; an other-class center equal to ``mu_1``: ``0``.
    Returns float32 (float64 for float64 inputs), without gradient.
    """
    check_certified_radius(feats, centers, center_classes, lipschitz, mode)
    lip = float(lipschitz.detach().item() if isinstance(lipschitz, Tensor) else lipschitz)
    classes = int64_ids(center_classes)
    _backend.refresh()
    with torch.no_grad():
        return certified_radius_op(feats.detach(), centers.detach(), classes, lip, RADIUS_MODES.index(mode))
