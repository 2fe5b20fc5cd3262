"""Seeded synthetic sets: 2-D moons and concentric rings (binary), and random
CIFAR-shaped images for timing an epoch without a data set (``--dry-run``)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_circles, make_moons

from .dataset import ArrayDataset

TWO_D_SIZE = 1000          # training and test points per 2-D set
TWO_D_NOISE = {"moons": 0.1, "rings": 0.08}


def _two_d(name, n, seed):
    if name == "moons":
        x, y = make_moons(n_samples=n, noise=TWO_D_NOISE[name], random_state=seed)
    else:
        x, y = make_circles(n_samples=n, noise=TWO_D_NOISE[name], factor=0.5, random_state=seed)
    return ArrayDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), 2, name)


def two_d(name: str, seed: int = 0, size: int = TWO_D_SIZE):
    """``(train, test)`` of ``size`` points each, ``x [N,2]``; the test set uses another seed."""
    return _two_d(name, size, 2 * seed), _two_d(name, size, 2 * seed + 1)


CIFAR_SHAPES = {  # name: (train size, test size, classes)
    "cifar10": (50_000, 10_000, 10),
    "cifar100": (50_000, 10_000, 100),
    "svhn": (73_257, 26_032, 10),
}


def _random_images(n, num_classes, gen, name):
    """Class-dependent colour offset plus noise, in [0, 1]: learnable, not meaningful."""
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]   # balanced classes
    palette = torch.rand(num_classes, 3, 1, 1, generator=gen)
    x = torch.empty(n, 3, 32, 32)
    for s in range(0, n, 8192):  # chunks keep the peak memory at one copy of x
        e = min(s + 8192, n)
        x[s:e] = (0.35 * palette[y[s:e]] + 0.65 * torch.rand(e - s, 3, 32, 32, generator=gen))
    return ArrayDataset(x, y, num_classes, name)


def random_images(like: str = "cifar10", seed: int = 0, n_train: int | None = None, n_test: int | None = None):
    """Synthetic ``(train, test)`` with the sizes and shapes of ``like`` (32x32 RGB);
    ``n_train`` / ``n_test`` make smaller sets of the same kind."""
    full_train, full_test, classes = CIFAR_SHAPES[like]
    n_train = full_train if n_train is None else min(n_train, full_train)
    n_test = full_test if n_test is None else min(n_test, full_test)
    gen = torch.Generator().manual_seed(seed)
    name = f"synthetic-{like}"
    return _random_images(n_train, classes, gen, name), _random_images(n_test, classes, gen, name)
