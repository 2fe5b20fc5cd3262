"""``ClusterClassifier``: a network plus, for clustering methods, the soft nearest-cluster head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterClassifier(nn.Module):
    """``forward(x) -> [N, L]`` class log-probabilities.

    ``method == "ce"`` (``head is None``): ``log_softmax(net(x).logits)``;
    otherwise ``head(net(x).features)``, the log-space Eq. 4 of a
    :class:`clustr_fast.nn.SoftClusterHead` (the network's last linear layer is unused).
    """

    def __init__(self, net: nn.Module, head: nn.Module | None, method: str, num_classes: int):
        super().__init__()
        self.net, self.head, self.method, self.num_classes = net, head, method, int(num_classes)

    def forward(self, x):
        logits, feats = self.net(x)
        if self.head is None:
            return F.log_softmax(logits, dim=1)
        return self.head(feats)

    def features(self, x):
        """Penultimate features ``[N, F]``."""
        return self.net(x)[1]

    @torch.no_grad()
    def predict(self, x, batch_size: int = 1024):
        """Labels ``int64 [N]`` (argmax of ``forward``), computed in batches without gradients."""
        if x.shape[0] == 0:
            return torch.empty(0, dtype=torch.long, device=x.device)
        return torch.cat([self(x[s:s + batch_size]).argmax(1) for s in range(0, x.shape[0], batch_size)])
