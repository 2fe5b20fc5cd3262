"""Reference soft nearest-cluster classifier (ClusTR Eq. 4)."""

import torch

from .._validate import acc_dtype, check_soft_cluster_logits, variance_tensor
from .pairwise_sqdist import _sqdist


def soft_cluster_logits(feats, centers, center_classes, num_classes, *, variance, top_d=None):
    """Class log-probabilities [N, L] of the soft nearest-cluster classifier.

    ``d = ||f_i - mu_j||^2``; per row keep the ``top_d`` nearest centers (all when
    None; ties broken by the lower center index), then
    ``logit_c = logsumexp_{selected j of class c}(-d_ij / (2 sigma^2))`` and
    ``log_softmax`` over the L classes. A class with no selected center gets
    ``-inf`` and a zero gradient: upstream gradient sent to a ``-inf`` entry is
    ignored. ``variance`` (sigma^2, float or 0-d tensor > 0)
    is a constant. Differentiable in ``feats`` and ``centers``; returns the
    accumulation dtype.
    """
    top_d = check_soft_cluster_logits(feats, centers, center_classes, num_classes, variance, top_d)
    acc = acc_dtype(feats.dtype)
    f, mu = feats.to(acc), centers.to(acc)
    n, c, nc = f.shape[0], mu.shape[0], int(num_classes)
    d = _sqdist(f, mu)
    z = d * (-0.5 / variance_tensor(variance, f))
    cls = center_classes.long()
    if top_d < c:
        idx = torch.sort(d.detach(), dim=1, stable=True).indices[:, :top_d]
        z = z.gather(1, idx)
        cls = cls[idx]                                        # [N, D]
    else:
        cls = cls.expand(n, c)
    # Per-class logsumexp with a per-class max shift (detached: logsumexp is shift invariant).
    mx = torch.full((n, nc), float("-inf"), dtype=acc, device=f.device)
    mx = mx.scatter_reduce(1, cls, z.detach(), reduce="amax", include_self=True)
    present = mx > float("-inf")
    shift = torch.where(present, mx, torch.zeros_like(mx))
    e = torch.exp(z - shift.gather(1, cls))                  # <= 1
    ssum = torch.zeros_like(mx).scatter_add(1, cls, e)       # >= 1 where present
    ninf = torch.full_like(ssum, float("-inf"))
    logit = torch.where(present, shift + torch.log(torch.where(present, ssum, torch.ones_like(ssum))), ninf)
    # -inf entries are constants: an upstream gradient given to them is dropped
    # (it would otherwise reach the inputs through log_softmax's normaliser).
    return torch.where(present, torch.log_softmax(logit, dim=1), ninf)


def soft_cluster_predict(feats, centers, center_classes, num_classes, *, variance, top_d=None):
    """``(labels int64 [N], probs [N, L])`` with ``probs = exp(soft_cluster_logits(...))``."""
    logits = soft_cluster_logits(feats, centers, center_classes, num_classes,
                                 variance=variance, top_d=top_d)
    return logits.argmax(1), logits.exp()
