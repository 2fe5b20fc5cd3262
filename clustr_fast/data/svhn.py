"""SVHN (cropped digits) from ``train_32x32.mat`` and ``test_32x32.mat``.

Each file holds ``X`` (uint8 ``[32, 32, 3, N]``) and ``y`` (``[N, 1]``, digit 0
stored as label 10, mapped back to 0 here). Nothing is downloaded.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .dataset import ArrayDataset, DataError

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _read(path):
    from scipy.io import loadmat

    if not os.path.isfile(path):
        raise DataError(f"svhn: missing file {path} (expected {FILES['train']} and {FILES['test']} under --data-root)")
    try:
        mat = loadmat(path)
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    except Exception as exc:            # scipy's MatReadError, truncated or foreign files: one line each
        raise DataError(f"svhn: cannot read {path}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DataError(f"svhn: {path} holds X of shape {x.shape} and {y.shape[0]} labels, expected [32,32,3,N]")
    y[y == 10] = 0
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"svhn: labels outside 0..10 in {path}")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))).float().div_(255.0)
    return ArrayDataset(images, torch.from_numpy(y), 10, "svhn")


def svhn(root: str):
    """``(train, test)``; ``x [N,3,32,32]`` in [0, 1]. ``root`` holds the two .mat files
    (directly or in an ``svhn`` sub-folder)."""
    folder = root if os.path.exists(os.path.join(root, FILES["train"])) else os.path.join(root, "svhn")
    return _read(os.path.join(folder, FILES["train"])), _read(os.path.join(folder, FILES["test"]))
