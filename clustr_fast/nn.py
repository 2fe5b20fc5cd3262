"""Modules: ``MagnetLoss`` (both forms of the Magnet loss) and ``SoftClusterHead`` (Eq. 4)."""
from __future__ import annotations

import torch
from torch import nn

from .ops.magnet_loss import magnet_loss, magnet_loss_batch
from .ops.soft_cluster_logits import soft_cluster_logits


class MagnetLoss(nn.Module):
    """Magnet loss, both forms.

    - ``forward(feats, cluster_ids, cluster_classes)``: the batch form
      (:func:`clustr_fast.magnet_loss_batch`; centers = in-batch cluster means).
    - ``forward(feats, cluster_ids=None, cluster_classes=None, *, centers=C)``: the global form
      (:func:`clustr_fast.magnet_loss` with ``assign=cluster_ids``, ``center_classes=cluster_classes``);
      ``cluster_ids=None`` assigns each row to its nearest center, ``cluster_classes=None`` makes
      every center its own class, so ``loss(feats, centers=C)`` works alone.
    """

    def __init__(self, alpha: float = 1.0, eps: float = 1e-8, reduction: str = "mean"):
        super().__init__()
        self.alpha, self.eps, self.reduction = alpha, eps, reduction

    def forward(self, feats, cluster_ids=None, cluster_classes=None, *, centers=None, variance=None):
        kw = dict(alpha=self.alpha, variance=variance, eps=self.eps, reduction=self.reduction)
        if centers is None:
            for name, value in (("cluster_ids", cluster_ids), ("cluster_classes", cluster_classes)):
                if value is None:
                    raise TypeError(f"MagnetLoss: `{name}` is required without `centers` (the batch form)")
            return magnet_loss_batch(feats, cluster_ids, cluster_classes, **kw)
        return magnet_loss(feats, centers, cluster_ids, cluster_classes, **kw)


class SoftClusterHead(nn.Module):
    """Soft nearest-cluster classifier of Eq. 4 over the ``top_d`` nearest centers.

    Holds ``centers [C,d]``, ``center_classes [C]`` and ``variance`` as buffers and
    returns class log-probabilities ``[N, num_classes]``, usable as logits by any attack.
    """

    def __init__(self, centers, center_classes, num_classes: int, variance, top_d: int | None = None):
        super().__init__()
        self.register_buffer("centers", torch.as_tensor(centers).detach().clone())
        self.register_buffer("center_classes", torch.as_tensor(center_classes).detach().clone().long())
        self.register_buffer("variance", torch.as_tensor(float(variance), dtype=torch.float64))
        self.num_classes = int(num_classes)
        self.top_d = top_d

    def forward(self, feats):
        return soft_cluster_logits(
            feats, self.centers.to(feats.dtype), self.center_classes, self.num_classes,
            variance=float(self.variance), top_d=self.top_d,
        )
