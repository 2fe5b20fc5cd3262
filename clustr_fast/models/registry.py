"""The model registry: name -> constructor, the inputs it takes, its Lipschitz bound.

A model registers itself where it is defined, with the ``register_model`` decorator; adding a
model is one file (its module under ``clustr_fast/models/``, imported by the package) and its
tests. Every model returns ``(logits [N, L], features [N, F])`` and takes inputs in [0, 1] pixel
space (2-D points as they are); normalisation is inside.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import inspect

import torch

INPUT_KINDS = ("points", "images", "any")


@dataclass(frozen=True)
class ModelSpec:
    """``constructor(num_classes, **kw)``; ``inputs``: "points" (``[N, D]``), "images"
    (``[N, C, S, S]``) or "any" (flattened); ``image_sizes``: the sides ``S`` it takes (None: any,
    subject to ``image_multiple``); ``lipschitz``: the proven L2 bound of the feature map as
    :func:`input_keywords` builds it (None: no proven bound; the evaluation estimates one);
    ``options``: constructor keywords a run may set (e.g. width)."""

    name: str
    constructor: Callable
    inputs: str
    image_sizes: tuple | None = None
    image_multiple: int = 1
    lipschitz: float | None = None
    normalize: str = "mean-std"
    options: tuple = ()

    def describe_input(self) -> str:
        if self.inputs == "points":
            return "[N, D] points"
        if self.image_sizes:
            text = " or ".join(f"[N, C, {s}, {s}] images" for s in self.image_sizes)
        else:
            text = "[N, C, S, S] images" + (f", S divisible by {self.image_multiple}" if self.image_multiple > 1 else "")
        return text + " (or [N, D] points)" if self.inputs == "any" else text

    def check_input(self, shape: tuple) -> str | None:
        """None when one example of ``shape`` (without the batch dimension) fits, else why not."""
        if self.inputs == "any":
            return None
        if self.inputs == "points":
            return None if len(shape) == 1 else f"takes {self.describe_input()}"
        if len(shape) != 3 or shape[1] != shape[2]:
            return f"takes {self.describe_input()}"
        side = shape[1]
        if (self.image_sizes and side not in self.image_sizes) or side % self.image_multiple:
            return f"takes {self.describe_input()}"
        return None


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, inputs: str, image_sizes=None, image_multiple: int = 1, lipschitz=None,
                   normalize: str = "mean-std", options=()):
    """Class decorator: add the model to ``MODELS`` under ``name``. ``normalize``: "mean-std" (the
    constructor takes ``mean`` and ``std`` of the training inputs) or "mean" (``mean`` only: a
    Lipschitz model keeps pixel-space distances, so its bound stays ``lipschitz``)."""
    if inputs not in INPUT_KINDS:
        raise ValueError(f"register_model: `inputs` must be one of {', '.join(INPUT_KINDS)}, got {inputs!r}")
    if normalize not in ("mean-std", "mean"):
        raise ValueError(f"register_model: `normalize` must be 'mean-std' or 'mean', got {normalize!r}")

    def add(constructor):
        if name in MODELS:
            raise ValueError(f"register_model: a model named {name!r} is already registered")
        MODELS[name] = ModelSpec(name, constructor, inputs, tuple(image_sizes) if image_sizes else None,
                                 image_multiple, lipschitz, normalize, tuple(options))
        return constructor

    return add


def _statistics(x: torch.Tensor):
    """Mean and std per feature (``[N, D]``) or per channel (``[N, C, H, W]``), accumulated in float64
    and rounded to float32, so they do not depend on the thread count (a resumed run compares its
    model's keywords with the checkpoint's)."""
    rows = x.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() > 2 else x.T
    n = rows.shape[1]
    mean = rows.sum(1, dtype=torch.float64) / n
    var = ((rows.double() - mean[:, None]) ** 2).sum(1) / max(n - 1, 1)
    return mean.float(), var.sqrt().float().clamp_min(1e-6)


def input_keywords(name: str, x: torch.Tensor) -> dict:
    """Constructor keywords of model ``name`` for training inputs ``x`` (``[N, D]`` or ``[N, C, S, S]``):
    the input size and the normalisation statistics of ``x``. ValueError when ``x`` does not fit."""
    spec = MODELS[name]
    why = spec.check_input(tuple(x.shape[1:]))
    if why is not None:
        raise ValueError(f"model {name!r} {why}; got inputs of shape {tuple(x.shape[1:])}")
    mean, std = _statistics(x)
    if spec.inputs == "any" or x.dim() == 2:
        kw = {"in_dim": int(x[0].numel())}
    else:
        kw = {"in_channels": int(x.shape[1])}
        if "image_size" in inspect.signature(spec.constructor).parameters:
            kw["image_size"] = int(x.shape[2])
    kw["mean"] = [float(v) for v in mean]
    if spec.normalize == "mean-std":
        kw["std"] = [float(v) for v in std]
    return kw
