"""A small CNN for 8x8 digits and 28x28 (Fashion-)MNIST images."""
from __future__ import annotations

from torch import nn

from .normalize import Normalize
from .registry import register_model

DIGITS_MEAN, DIGITS_STD = [0.305], [0.378]  # scikit-learn digits / 16


@register_model("cnn", inputs="images", image_sizes=(8, 28))
class SmallCNN(nn.Module):
    """``x [N, C, S, S] -> (logits [N, L], features [N, feature_dim])``, ``S`` = ``image_size``
    (8: digits, 28: MNIST and Fashion-MNIST; even).

    conv3x3(32) - ReLU - conv3x3(64) - ReLU - maxpool2 - flatten(64 (S/2)^2) -
    Linear(feature_dim) - ReLU are the features; a linear layer gives the logits.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, feature_dim: int = 64,
                 mean=DIGITS_MEAN, std=DIGITS_STD, image_size: int = 8):
        super().__init__()
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2 or image_size % 2:
            raise ValueError(f"SmallCNN: `image_size` must be an even int >= 2, got {image_size!r}")
        side = image_size // 2
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * side * side, feature_dim), nn.ReLU(),
        )
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def forward(self, x):
        f = self.body(self.normalize(x))
        return self.fc(f), f
