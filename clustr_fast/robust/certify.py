"""Certified radii (Theorem 1) and certified-accuracy curves.

For a cluster model the certificate is the one of Theorem 1 for the
*nearest-center* rule ``class(argmin_j ||f(x) - mu_j||)``: with ``L`` an upper
bound on the Lipschitz constant of the feature map ``f`` (``lipschitz.py``), no
input perturbation with ``||delta||_2 < r(x)`` changes that class, where ``r`` is
``certified_radius(f(x), centers, center_classes, L)`` (sound mode: min over
every other-class center; ``mode="paper"``, the nearest other-class center only,
is reported beside it and can overstate). The soft classifier of Eq. 4 predicts
the same class when K = 1; ``soft_agreement`` reports how often they agree.

For a cross-entropy model (no centers) the certificate is the margin bound
``r = (z_p - max_{j!=p} z_j) / (sqrt(2) L_logits)``, ``L_logits`` a bound for the
logit map (a logit difference moves by at most ``sqrt(2) L_logits ||delta||``).

Certified accuracy at radius ``r``: the fraction of samples that are correctly
classified and have radius ``> r``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

import clustr_fast

from .attacks import pgd
from .lipschitz import lipschitz_bound


class NearestCenterScores(nn.Module):
    """Scores ``[N, L]`` of the nearest-center rule: ``s_c = -min_{j: class_j = c} ||f(x) - mu_j||^2``
    (``-inf`` for a class without centers); ``argmax`` is the class of the nearest center."""

    def __init__(self, classifier):
        super().__init__()
        if getattr(classifier, "head", None) is None:
            raise ValueError("NearestCenterScores: `classifier` has no cluster head")
        self.classifier = classifier

    def forward(self, x):
        head = self.classifier.head
        feats = self.classifier.features(x)
        d = clustr_fast.pairwise_sqdist(feats, head.centers.to(feats.dtype))
        cls = head.center_classes.long().expand(d.shape[0], -1)
        out = torch.full((d.shape[0], head.num_classes), float("-inf"), dtype=d.dtype, device=d.device)
        return out.scatter_reduce(1, cls, -d, reduce="amax", include_self=True)


@dataclass
class Certificate:
    """Per-sample certificate. ``radii``/``radii_paper`` ``[N]`` (L2, input space),
    ``pred`` the certified rule's prediction, ``correct = pred == y``, ``lipschitz``
    the bound used, ``kind`` "clusters" or "margin", ``soft_agreement`` the fraction
    where the model's own prediction equals ``pred``."""
    radii: torch.Tensor
    radii_paper: torch.Tensor
    pred: torch.Tensor
    correct: torch.Tensor
    lipschitz: float
    kind: str
    soft_agreement: float


def classifier_lipschitz(classifier, example, *, output: int) -> float:
    """Bound for ``classifier.net`` output ``output`` (0 logits, 1 features)."""
    return lipschitz_bound(classifier.net, example, output=output)


def certify(classifier, x, y, *, lipschitz=None, batch_size=1024) -> Certificate:
    """Certificates of ``classifier`` on ``(x [N, ...], y [N])``; ``lipschitz``: a given
    bound (computed from the network when None)."""
    classifier.eval()
    clusters = getattr(classifier, "head", None) is not None
    if lipschitz is None:
        lipschitz = classifier_lipschitz(classifier, x[:1], output=1 if clusters else 0)
    if not (isinstance(lipschitz, (int, float)) and lipschitz > 0 and math.isfinite(lipschitz)):
        raise ValueError(f"certify: `lipschitz` must be a finite number > 0, got {lipschitz!r}")
    radii, paper, pred, soft = [], [], [], []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size]
            soft.append(classifier(xb).argmax(1))
            if clusters:
                head = classifier.head
                f = classifier.features(xb)
                mu = head.centers.to(f.dtype)
                radii.append(clustr_fast.certified_radius(f, mu, head.center_classes, lipschitz))
                paper.append(clustr_fast.certified_radius(f, mu, head.center_classes, lipschitz, mode="paper"))
                pred.append(NearestCenterScores(classifier)(xb).argmax(1))
            else:
                z = classifier(xb)
                top = z.topk(2, dim=1)
                r = (top.values[:, 0] - top.values[:, 1]) / (math.sqrt(2.0) * lipschitz)
                radii.append(r)
                paper.append(r)
                pred.append(top.indices[:, 0])
    pred_t = torch.cat(pred).cpu()
    soft_t = torch.cat(soft).cpu()
    return Certificate(
        radii=torch.cat(radii).cpu().double(), radii_paper=torch.cat(paper).cpu().double(),
        pred=pred_t, correct=pred_t == y.cpu(), lipschitz=float(lipschitz),
        kind="clusters" if clusters else "margin",
        soft_agreement=float((soft_t == pred_t).float().mean()),
    )


def certified_accuracy(radii, correct, grid):
    """``[frac(correct & radii > r) for r in grid]``."""
    radii, correct = torch.as_tensor(radii).double(), torch.as_tensor(correct).bool()
    if radii.shape != correct.shape:
        raise ValueError("certified_accuracy: `radii` and `correct` must have the same shape")
    n = max(radii.numel(), 1)
    return [float(((radii > r) & correct).sum()) / n for r in grid]


def radius_grid(radii, correct, points=50):
    """``points`` radii from 0 to just past the largest finite certified radius."""
    r = torch.as_tensor(radii).double()[torch.as_tensor(correct).bool()]
    r = r[torch.isfinite(r)]
    top = float(r.max()) * 1.05 if r.numel() and float(r.max()) > 0 else 1.0
    return [top * i / (points - 1) for i in range(points)]


def attack_certified(classifier, x, y, cert: Certificate, *, steps=50, restarts=2, clip=(0.0, 1.0),
                     seed=0, batch_size=512):
    """L2 PGD (margin loss) at each certified sample's own radius against the certified rule.

    Returns ``(attacked, flipped)``: how many certified samples (correct, finite
    radius > 0) were attacked and how many of them an attack flipped. A sound
    certificate gives ``flipped == 0``.
    """
    target = NearestCenterScores(classifier) if cert.kind == "clusters" else classifier
    mask = cert.correct & (cert.radii > 0) & torch.isfinite(cert.radii)
    idx = mask.nonzero()[:, 0]
    flipped = 0
    for s in range(0, idx.numel(), batch_size):
        b = idx[s:s + batch_size]
        xb, yb = x[b], y[b].to(x.device)
        eps = cert.radii[b].to(x.dtype).to(x.device)
        res = pgd(target, xb, yb, eps=eps, steps=steps, restarts=restarts, loss="margin",
                  norm="l2", step_size=None, clip=clip, seed=seed)
        # re-check the kept iterates lie inside the ball (up to rounding)
        dist = (res.x_adv - xb).flatten(1).norm(dim=1)
        inside = dist <= eps * (1 + 1e-5) + 1e-7
        flipped += int((res.fooled & inside).sum())
    return int(idx.numel()), flipped
