"""``ArrayDataset``: a labelled set held as two tensors, and ``DataError``."""
from __future__ import annotations

from dataclasses import dataclass

import torch


class DataError(Exception):
    """A data set cannot be read (missing or malformed files, unknown name); one-line message."""


@dataclass
class ArrayDataset:
    """``x`` float32 (images ``[N,C,H,W]`` in [0, 1]; 2-D points ``[N,2]``), ``y`` int64 ``[N]``."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self):
        if self.x.dtype != torch.float32:
            raise TypeError(f"ArrayDataset: `x` must be float32, got {self.x.dtype}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise TypeError(f"ArrayDataset: `y` must be int64 of shape [N], got {self.y.dtype} {tuple(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"ArrayDataset: `x` has {self.x.shape[0]} rows but `y` has {self.y.shape[0]}")
        if self.y.numel() and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise ValueError(f"ArrayDataset: `y` must lie in [0, {self.num_classes})")

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index):
        return self.x[index], self.y[index]

    def subset(self, size: int, seed: int = 0) -> "ArrayDataset":
        """A random subset of at most ``size`` examples (the whole set when it is smaller)."""
        if size >= len(self):
            return self
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=gen)[:size].sort().values
        return ArrayDataset(self.x[idx].contiguous(), self.y[idx].contiguous(), self.num_classes, self.name)
