"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; no download)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .dataset import ArrayDataset

TEST_FRACTION = 0.2


def digits(seed: int = 0):
    """``(train, test)``: a stratified 80/20 split by ``seed``; ``x [N,1,8,8]`` in [0, 1] (pixel / 16)."""
    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    make = lambda a, b: ArrayDataset(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(b), 10, "digits")
    return make(xtr, ytr), make(xte, yte)
