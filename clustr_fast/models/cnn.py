"""A small CNN for 8x8 single-channel digits."""
from __future__ import annotations

from torch import nn

from .normalize import Normalize

DIGITS_MEAN, DIGITS_STD = [0.305], [0.378]  # scikit-learn digits / 16


class SmallCNN(nn.Module):
    """``x [N,1,8,8] -> (logits [N, L], features [N, feature_dim])``.

    conv3x3(32) - ReLU - conv3x3(64) - ReLU - maxpool2 - flatten(64*4*4) -
    Linear(feature_dim) - ReLU are the features; a linear layer gives the logits.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, feature_dim: int = 64,
                 mean=DIGITS_MEAN, std=DIGITS_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, feature_dim), nn.ReLU(),
        )
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def forward(self, x):
        f = self.body(self.normalize(x))
        return self.fc(f), f
