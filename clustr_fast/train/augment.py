"""Standard CIFAR augmentation on a batch tensor: random 32x32 crop of the image
zero-padded by 4, and a random horizontal flip (both drawn from a CPU generator)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """``x [N,C,H,W] -> [N,C,H,W]``: each image shifted by up to ``pad`` pixels and flipped with p=1/2."""
    n, c, h, w = x.shape
    dev = x.device
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    rows = top[:, None] + torch.arange(h, device=dev)                      # [N, H]
    cols = left[:, None] + torch.arange(w, device=dev)                     # [N, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    n_idx = torch.arange(n, device=dev)[:, None, None, None]
    c_idx = torch.arange(c, device=dev)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]
