"""Reference Magnet loss (ClusTR Eq. 3 with the reference code's two epsilons)."""

import math

import torch

from .._validate import acc_dtype, check_magnet_loss, check_magnet_loss_batch, variance_tensor
from .cluster_means import _cluster_means, _cluster_variance
from .pairwise_sqdist import _sqdist


def _magnet_core(f, mu, assign, classes, alpha, variance, eps, reduction, valid=None):
    """Log-space Magnet loss; ``f``, ``mu`` in the accumulation dtype.

    ``valid`` [C] (bool, optional) removes centers from every impostor set.
    """
    assign = assign.long()
    if variance is None:
        var = _cluster_variance(f, mu, assign)
    else:
        var = variance_tensor(variance, f)
    s = 0.5 / var
    diff = f - mu[assign]
    own = (diff * diff).sum(1)                                   # [N]
    a = -s * own - float(alpha)                                  # log numerator
    d = _sqdist(f, mu)                                           # [N, C]
    imp = classes[None, :] != classes[assign][:, None]           # impostor mask [N, C]
    if valid is not None:
        imp = imp & valid[None, :]
    has = imp.any(1)                                             # rows with an impostor
    z = (-s * d).masked_fill(~imp, float("-inf"))
    z = torch.where(has[:, None], z, torch.zeros_like(z))        # finite dummy row: no NaN
    lse = torch.logsumexp(z, dim=1)
    eps = float(eps)
    if eps > 0:
        log_eps = math.log(eps)
        b = torch.where(has, torch.logaddexp(lse, torch.full_like(lse, log_eps)),
                        torch.full_like(lse, log_eps))
        loss = torch.relu(-torch.logaddexp(a - b, torch.full_like(a, log_eps)))
    else:
        b = torch.where(has, lse, torch.zeros_like(lse))
        loss = torch.where(has, torch.relu(b - a), torch.zeros_like(a))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def magnet_loss(feats, centers, assign, center_classes, *, alpha=1.0, variance=None,
                eps=1e-8, reduction="mean"):
    """Magnet loss of ``feats`` [N, d] against ``centers`` [C, d].

    With ``s = 1 / (2 sigma^2)``, ``own_i = ||f_i - mu_{assign_i}||^2`` and the
    impostors of i = every center j with ``center_classes[j] != center_classes[assign_i]``::

        loss_i = relu(-log(exp(-s own_i - alpha) / (sum_imp exp(-s d_ij) + eps) + eps))

    computed in log space: ``A = -s own_i - alpha``,
    ``B = logaddexp(logsumexp_imp(-s d_ij), log eps)``,
    ``loss_i = relu(-logaddexp(A - B, log eps))``; with ``eps = 0``,
    ``loss_i = relu(B - A)``. A row with no impostor has an impostor sum of 0,
    so ``B = log eps``; with ``eps = 0`` its loss is defined as 0.

    ``variance=None``: ``sigma^2 = cluster_variance(feats, centers, assign)`` and
    gradients flow through it (a zero variance gives inf/nan); a given variance
    (float or 0-d tensor > 0) is a constant. ``reduction``: "mean", "sum" or
    "none" ([N]). Returns the accumulation dtype.
    """
    check_magnet_loss(feats, centers, assign, center_classes, alpha, variance, eps, reduction)
    acc = acc_dtype(feats.dtype)
    return _magnet_core(feats.to(acc), centers.to(acc), assign, center_classes,
                        alpha, variance, eps, reduction)


def magnet_loss_batch(feats, cluster_ids, cluster_classes, *, alpha=1.0, variance=None,
                      eps=1e-8, reduction="mean"):
    """Stochastic Magnet loss: centers are the batch means of each cluster.

    ``centers = cluster_means(feats, cluster_ids, M)`` with ``M = len(cluster_classes)``
    (gradients flow through the means), then :func:`magnet_loss` with
    ``assign=cluster_ids`` and ``center_classes=cluster_classes``. A cluster with
    no sample in the batch is excluded from every impostor set (its zero "mean"
    is not a center).
    """
    check_magnet_loss_batch(feats, cluster_ids, cluster_classes, alpha, variance, eps, reduction)
    f = feats.to(acc_dtype(feats.dtype))
    mu, counts = _cluster_means(f, cluster_ids, cluster_classes.shape[0])
    return _magnet_core(f, mu, cluster_ids, cluster_classes, alpha, variance, eps,
                        reduction, valid=counts > 0)
