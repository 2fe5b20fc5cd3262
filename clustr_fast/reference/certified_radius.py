"""Reference certified radius of the nearest-center classifier (ClusTR Theorem 1)."""

import torch

from .._validate import acc_dtype, check_certified_radius


def _direct_sqdist(a, b):
    # Difference-based distances (no ||a||^2 + ||b||^2 - 2ab cancellation): equal
    # centers give bit-identical distances and a zero center-center distance.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square()


def certified_radius(feats, centers, center_classes, lipschitz, *, mode="sound"):
    """Certified radius [N] of each row of ``feats`` [N, d] for the nearest-center rule.

    ``mu_1`` = nearest center (ties: lower index), ``c_1`` its class, ``d_j = ||f - mu_j||^2``.

    - ``mode="sound"``: ``min_{j: class_j != c_1} (d_j - d_1) / (2 L ||mu_j - mu_1||)``,
      the distance (divided by L) to the nearest bisector that separates ``mu_1``
      from a center of another class: no input perturbation of norm below it can
      change the predicted class of an L-Lipschitz feature map.
    - ``mode="paper"``: the same expression for the nearest other-class center only
      (the paper's shortcut); it can overstate the sound radius.

    No other-class center: ``+inf``. An other-class center equal to ``mu_1``: 0.
    ``lipschitz``: float or 0-d tensor > 0. Returns the accumulation dtype, no gradient.
    """
    check_certified_radius(feats, centers, center_classes, lipschitz, mode)
    acc = acc_dtype(feats.dtype)
    lip = float(lipschitz.item() if isinstance(lipschitz, torch.Tensor) else lipschitz)
    with torch.no_grad():
        f, mu = feats.detach().to(acc), centers.detach().to(acc)
        cls = center_classes.long()
        d = _direct_sqdist(f, mu)                                   # [N, C]
        i1 = d.argmin(1)                                            # first minimum
        d1 = d.gather(1, i1[:, None])
        gap = torch.cdist(mu, mu, compute_mode="donot_use_mm_for_euclid_dist")[i1]  # [N, C]
        other = cls[None, :] != cls[i1][:, None]
        r = (d - d1) / (2.0 * lip * gap)
        r = torch.where(gap > 0, r, torch.zeros_like(r))
        inf = torch.full_like(r, float("inf"))
        r = torch.where(other, r, inf)
        if mode == "sound":
            return r.min(1).values
        j = torch.where(other, d, inf).argmin(1)                    # nearest other-class center
        return torch.where(other.any(1), r.gather(1, j[:, None])[:, 0], inf[:, 0])
