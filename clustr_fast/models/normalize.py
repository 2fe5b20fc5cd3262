"""Per-channel normalisation as the first layer, so models take [0, 1] pixels."""
from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (dim 1); ``mean``, ``std`` are buffers of length C."""

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape:
            raise ValueError(f"Normalize: `mean` and `std` differ in length ({mean.numel()} vs {std.numel()})")
        if (std <= 0).any():
            raise ValueError("Normalize: `std` must be positive")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)
