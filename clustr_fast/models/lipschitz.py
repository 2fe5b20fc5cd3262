"""Lipschitz-bounded models: feature maps with a proven L2 constant, so Theorem 1 certifies.

Every model is a chain of :mod:`lipschitz_layers` (AOL dense/conv layers, SLL residual layers,
MaxMin or ReLU, pixel-unshuffle downsampling; no BatchNorm) after a ``Centering`` input layer.
``lipschitz_bound(output=1)`` is the product of the layers' proven constants: exactly 1 as the
training loop builds them (``mean`` only: inputs are centered, not scaled, so feature distances
stay in pixel units), ``1 / min(std)`` when built with ``std``.
``clustr_fast.robust.lipschitz.lipschitz_bound`` returns it.

- ``"lip-mlp"``: points ``[N, D]`` or images flattened (``in_dim`` = C*H*W);
- ``"lip-cnn"``: small images ``[N, C, S, S]``, ``S`` divisible by 4 (8x8 digits, 28x28 MNIST);
- ``"lip-resnet"``: 32x32 images ``[N, 3, 32, 32]``, SLL residual stages.

Like the other models they return ``(logits [N, L], features [N, F])``; the logits come from a
plain linear layer on the features (dropped by the Magnet phase).
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_model
from .lipschitz_layers import (AOLConv2d, AOLLinear, Centering, Flatten, InvertibleDownsample, MaxMin, ReLU,
                               SLLConv2d, SLLLinear, chain_bound)

ACTIVATIONS = {"maxmin": MaxMin, "relu": ReLU}


def _activation(name: str, owner: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"{owner}: `activation` must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def _centering(mean, std, owner: str) -> Centering:
    """``(x - mean) / min(std)``, ``mean`` per channel (default 0), ``std`` per channel (default 1)."""
    mean = torch.zeros(1) if mean is None else torch.as_tensor(mean, dtype=torch.float32).flatten()
    scale = 1.0
    if std is not None:
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if std.numel() == 0 or not bool((std > 0).all()):
            raise ValueError(f"{owner}: `std` must hold positive entries, got {std.tolist()}")
        scale = float(std.min())
    return Centering(mean, scale)


def _spectral_norm(weight: torch.Tensor) -> float:
    """Largest singular value in float64 (square root of the top eigenvalue of the smaller Gram)."""
    w = weight.detach().double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0).sqrt())


class LipschitzNet(nn.Module):
    """``features = body(x)`` (a chain of proven-constant layers), ``logits = fc(features)``."""

    body: nn.Sequential
    fc: nn.Linear

    def forward(self, x):
        f = self.body(x)
        return self.fc(f), f

    def lipschitz_bound(self, output: int = 1) -> float:
        """Proven L2 Lipschitz bound of ``x -> self(x)[output]``: the product of the layers'
        constants for the features (``output=1``), times ``||fc||_2`` for the logits (``output=0``)."""
        if output not in (0, 1):
            raise ValueError(f"lipschitz_bound: `output` must be 0 (logits) or 1 (features), got {output!r}")
        bound = chain_bound(self.body)
        return bound * _spectral_norm(self.fc.weight) if output == 0 else bound


@register_model("lip-mlp", inputs="any", lipschitz=1.0, normalize="mean",
                options=("width", "depth", "feature_dim", "residual"))
class LipMLP(LipschitzNet):
    """``x [N, D]`` (or ``[N, C, H, W]``, flattened) ``-> (logits [N, L], features [N, feature_dim])``.

    Centering - flatten - AOLLinear(in_dim, width) - act - ``depth`` x [AOLLinear(width, width) - act]
    - AOLLinear(width, feature_dim); with ``residual=True`` the hidden layers are SLLLinear(width)
    instead (each with its own ReLU). ``mean``/``std`` per input channel (dim 1).
    """

    def __init__(self, num_classes: int, in_dim: int = 2, width: int = 256, depth: int = 1,
                 feature_dim: int = 64, activation: str = "maxmin", residual: bool = False, mean=None, std=None):
        super().__init__()
        for name, v in (("in_dim", in_dim), ("width", width), ("feature_dim", feature_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LipMLP: `{name}` must be a positive int, got {v!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"LipMLP: `depth` must be an int >= 0, got {depth!r}")
        layers = [_centering(mean, std, "LipMLP"), Flatten(), AOLLinear(in_dim, width),
                  _activation(activation, "LipMLP")]
        for _ in range(depth):
            layers += [SLLLinear(width)] if residual else [AOLLinear(width, width), _activation(activation, "LipMLP")]
        layers.append(AOLLinear(width, feature_dim))
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim


@register_model("lip-cnn", inputs="images", image_multiple=4, lipschitz=1.0, normalize="mean",
                options=("width", "feature_dim"))
class LipCNN(LipschitzNet):
    """``x [N, C, S, S] -> (logits [N, L], features [N, feature_dim])`` (``S = image_size``, divisible by 4).

    Centering - AOLConv3x3(C, w) - act - SLLConv(w) - unshuffle2 - AOLConv3x3(4w, 2w) - act -
    SLLConv(2w) - unshuffle2 - flatten(8w (S/4)^2) - AOLLinear(feature_dim). Every layer has
    constant 1.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16, feature_dim: int = 64,
                 image_size: int = 8, activation: str = "maxmin", mean=None, std=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("width", width), ("feature_dim", feature_dim),
                        ("image_size", image_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LipCNN: `{name}` must be a positive int, got {v!r}")
        if image_size % 4:
            raise ValueError(f"LipCNN: `image_size` must be divisible by 4, got {image_size}")
        w, s = width, image_size // 4
        act = lambda: _activation(activation, "LipCNN")  # noqa: E731
        self.body = nn.Sequential(
            _centering(mean, std, "LipCNN"),
            AOLConv2d(in_channels, w, 3), act(), SLLConv2d(w), InvertibleDownsample(2),
            AOLConv2d(4 * w, 2 * w, 3), act(), SLLConv2d(2 * w), InvertibleDownsample(2),
            Flatten(), AOLLinear(8 * w * s * s, feature_dim),
        )
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim


@register_model("lip-resnet", inputs="images", image_sizes=(32,), lipschitz=1.0, normalize="mean",
                options=("width", "blocks", "feature_dim"))
class LipResNet(LipschitzNet):
    """``x [N, C, 32, 32] -> (logits [N, L], features [N, feature_dim])``.

    Stem AOLConv3x3(C, w) - act, then one stage per entry of ``blocks``; stage i: ``blocks[i]`` x
    SLLConv(c_i) - unshuffle2 (channels x4) - AOLConv1x1(4 c_i, 2 c_i) - act, with c_0 = w; then
    AOLConv1x1(c, feature_dim / side^2) - flatten - AOLLinear(feature_dim), side = S / 2^len(blocks).
    Residual stages are SLL layers (constant 1, where ``x + f(x)`` would prove only 2); every layer
    has constant 1.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, blocks=(2, 2, 2),
                 feature_dim: int = 512, image_size: int = 32, activation: str = "maxmin", mean=None, std=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("width", width), ("feature_dim", feature_dim),
                        ("image_size", image_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LipResNet: `{name}` must be a positive int, got {v!r}")
        blocks = tuple(int(n) for n in blocks)
        if not blocks or min(blocks) < 0:
            raise ValueError(f"LipResNet: `blocks` must be a nonempty sequence of ints >= 0, got {blocks!r}")
        down = 2 ** len(blocks)
        if image_size % down:
            raise ValueError(f"LipResNet: `image_size` must be divisible by 2^len(blocks) = {down}, got {image_size}")
        side = image_size // down
        if feature_dim % (side * side):
            raise ValueError(f"LipResNet: `feature_dim` must be divisible by (image_size / {down})^2 = {side * side}, "
                             f"got {feature_dim}")
        act = lambda: _activation(activation, "LipResNet")  # noqa: E731
        layers = [_centering(mean, std, "LipResNet"), AOLConv2d(in_channels, width, 3), act()]
        c = width
        for n in blocks:
            layers += [SLLConv2d(c) for _ in range(n)]
            layers += [InvertibleDownsample(2), AOLConv2d(4 * c, 2 * c, 1), act()]
            c *= 2
        layers += [AOLConv2d(c, feature_dim // (side * side), 1), Flatten(), AOLLinear(feature_dim, feature_dim)]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim


__all__ = ["ACTIVATIONS", "LipCNN", "LipMLP", "LipResNet", "LipschitzNet"]
