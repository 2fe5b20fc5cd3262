"""The 3-layer MLP of the paper's synthetic experiment (20 hidden units)."""
from __future__ import annotations

from torch import nn

from .normalize import Normalize
from .registry import register_model


@register_model("mlp", inputs="points")
class MLP(nn.Module):
    """``x [N, in_dim] -> (logits [N, L], features [N, hidden])``.

    Linear(in, 20) - ReLU - Linear(20, 20) - ReLU gives the features; the third
    linear layer gives the logits (dropped by the Magnet phase).
    """

    def __init__(self, num_classes: int, in_dim: int = 2, hidden: int = 20, mean=None, std=None):
        super().__init__()
        self.normalize = Normalize(mean if mean is not None else [0.0] * in_dim,
                                   std if std is not None else [1.0] * in_dim)
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden

    def forward(self, x):
        f = self.body(self.normalize(x))
        return self.fc(f), f
