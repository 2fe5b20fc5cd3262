"""Models that return ``(logits [N, L], features [N, F])``; normalisation is inside,
so every model takes inputs in [0, 1] pixel space (2-D points as they are).

- ``"mlp"``: 3-layer MLP, 20 hidden units, 2-D input (the synthetic experiment);
- ``"cnn"``: small CNN for 8x8 digits ``[N,1,8,8]``;
- ``"resnet18"``: ResNet-18 for 32x32 images, 512-d features;
- ``"lip-mlp"``, ``"lip-cnn"``, ``"lip-resnet"``: Lipschitz-bounded counterparts
  (``lipschitz.py``) whose ``lipschitz_bound()`` is a proven bound of the feature map.
"""
from __future__ import annotations

from torch import nn

from .cnn import SmallCNN
from .lipschitz import LipCNN, LipMLP, LipResNet
from .mlp import MLP
from .resnet import ResNet18

MODELS = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ResNet18,
          "lip-mlp": LipMLP, "lip-cnn": LipCNN, "lip-resnet": LipResNet}
DEFAULT_MODEL = {"moons": "mlp", "rings": "mlp", "digits": "cnn",
                 "cifar10": "resnet18", "cifar100": "resnet18", "svhn": "resnet18"}


def build_model(name: str, num_classes: int, **kw) -> nn.Module:
    """A fresh model ``name`` (one of ``MODELS``) with ``num_classes`` outputs;
    ``kw`` go to its constructor (e.g. ``in_dim``, ``hidden``, ``mean``, ``std``)."""
    if name not in MODELS:
        raise ValueError(f"build_model: `name` must be one of {', '.join(MODELS)}, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"build_model: `num_classes` must be a positive int, got {num_classes!r}")
    try:
        return MODELS[name](num_classes, **kw)
    except TypeError as exc:
        raise TypeError(f"build_model: bad keyword for {name!r}: {exc}") from None


def default_model(data: str) -> str:
    """The model a data set trains with unless told otherwise."""
    return DEFAULT_MODEL.get(data.removeprefix("synthetic-"), "resnet18")


__all__ = ["DEFAULT_MODEL", "LipCNN", "LipMLP", "LipResNet", "MLP", "MODELS", "ResNet18", "SmallCNN",
           "build_model", "default_model"]
