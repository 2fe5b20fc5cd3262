"""Models that return ``(logits [N, L], features [N, F])``; normalisation is inside,
so every model takes inputs in [0, 1] pixel space (2-D points as they are).

``MODELS`` (``registry.py``) maps each name to its constructor, the inputs it takes and its
proven Lipschitz bound. Every module of this package is imported here, so a model that
registers itself (``@register_model``) in a new module is known without another edit.

- ``"mlp"``: 3-layer MLP, 20 hidden units, 2-D input (the synthetic experiment);
- ``"cnn"``: small CNN for 8x8 digits and 28x28 (Fashion-)MNIST ``[N,1,S,S]``;
- ``"resnet18"``: ResNet-18 for 32x32 images, 512-d features;
- ``"lip-mlp"``, ``"lip-cnn"``, ``"lip-resnet"``: Lipschitz-bounded counterparts
  (``lipschitz.py``) whose ``lipschitz_bound()`` is a proven bound of the feature map (1 as
  the training loop builds them).
"""
from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from .registry import MODELS, ModelSpec, input_keywords, register_model

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .cnn import SmallCNN  # noqa: E402
from .lipschitz import LipCNN, LipMLP, LipResNet  # noqa: E402
from .mlp import MLP  # noqa: E402
from .resnet import ResNet18  # noqa: E402

DEFAULT_MODEL = {"moons": "mlp", "rings": "mlp", "digits": "cnn", "mnist5k": "cnn", "mnist": "cnn",
                 "fashion-mnist": "cnn", "cifar10": "resnet18", "cifar100": "resnet18", "svhn": "resnet18"}


def build_model(name: str, num_classes: int, **kw) -> nn.Module:
    """A fresh model ``name`` (one of ``MODELS``) with ``num_classes`` outputs;
    ``kw`` go to its constructor (e.g. ``in_dim``, ``hidden``, ``mean``, ``std``)."""
    if name not in MODELS:
        raise ValueError(f"build_model: `name` must be one of {', '.join(MODELS)}, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"build_model: `num_classes` must be a positive int, got {num_classes!r}")
    try:
        return MODELS[name].constructor(num_classes, **kw)
    except TypeError as exc:
        raise TypeError(f"build_model: bad keyword for {name!r}: {exc}") from None


def default_model(data: str) -> str:
    """The model a data set trains with unless told otherwise."""
    return DEFAULT_MODEL.get(data.removeprefix("synthetic-"), "resnet18")


__all__ = ["DEFAULT_MODEL", "LipCNN", "LipMLP", "LipResNet", "MLP", "MODELS", "ModelSpec", "ResNet18", "SmallCNN",
           "build_model", "default_model", "input_keywords", "register_model"]
