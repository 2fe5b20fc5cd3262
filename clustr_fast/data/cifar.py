"""CIFAR-10 and CIFAR-100 from their python pickle batches (the standard
``cifar-10-batches-py`` / ``cifar-100-python`` folders; nothing is downloaded).

Each batch is a pickled dict with ``b"data"`` (uint8 ``[N, 3072]``, channel-major
32x32) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from .dataset import ArrayDataset, DataError

LAYOUT = {  # name: (folder, train files, test files, label key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def _folder(root, name):
    """``root`` itself when it holds the batches, else ``root/<standard folder>``."""
    folder, train_files, _, _, _ = LAYOUT[name]
    if os.path.exists(os.path.join(root, train_files[0])):
        return root
    return os.path.join(root, folder)


def _read_batch(path, label_key, name):
    if not os.path.isfile(path):
        raise DataError(f"{name}: missing file {path} (expected the python version of {name} under --data-root)")
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except Exception as exc:            # truncated or foreign files raise many kinds: one line each
        raise DataError(f"{name}: cannot read {path}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{name}: {path} holds data of shape {data.shape} and {labels.shape[0]} labels, "
                        "expected [N, 3072] and N labels")
    return data, labels


def _split(folder, files, label_key, classes, name):
    parts = [_read_batch(os.path.join(folder, f), label_key, name) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{name}: labels outside [0, {classes}) in {folder}")
    x = torch.from_numpy(data).view(-1, 3, 32, 32).float().div_(255.0)
    return ArrayDataset(x, torch.from_numpy(labels), classes, name)


def cifar(name: str, root: str):
    """``(train, test)`` of ``name`` in {"cifar10", "cifar100"}; ``x [N,3,32,32]`` in [0, 1]."""
    _, train_files, test_files, label_key, classes = LAYOUT[name]
    folder = _folder(root, name)
    return (_split(folder, train_files, label_key, classes, name),
            _split(folder, test_files, label_key, classes, name))
