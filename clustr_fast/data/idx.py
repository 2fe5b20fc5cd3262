"""MNIST-format data sets read from the standard IDX files (gzip or not; nothing is downloaded).

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>`` (type ``0x08``: unsigned bytes),
``ndim`` big-endian int32 sizes, then the values: images ``[N, H, W]`` (magic ``0x00000803``) and
labels ``[N]`` (magic ``0x00000801``). A folder holds the four standard files
``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each may end in ``.gz``).

- ``fashion-mnist``: Zalando's Fashion-MNIST (60,000 + 10,000, 28x28, 10 classes). Without a root,
  Debian's package ``dataset-fashion-mnist`` is found in ``DEBIAN_FASHION_MNIST``;
- ``mnist``: LeCun's MNIST, the same format, from ``root``.
"""
from __future__ import annotations

import gzip
import os

import numpy as np
import torch

from .dataset import ArrayDataset, DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
NUM_CLASSES = 10
SPLITS = {"train": "train", "test": "t10k"}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _find(folder: str, stem: str, name: str) -> str:
    for path in (os.path.join(folder, stem), os.path.join(folder, stem + ".gz")):
        if os.path.isfile(path):
            return path
    raise DataError(f"{name}: missing file {os.path.join(folder, stem)}[.gz] (the standard IDX files "
                    "under --data-root)")


def _read_bytes(path: str, name: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        with open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError) as exc:     # gzip raises BadGzipFile (an OSError) or EOFError when cut short
        raise DataError(f"{name}: cannot read {path}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def read_idx(path: str, magic: int, name: str = "idx") -> np.ndarray:
    """The uint8 array stored in the IDX file ``path``, which must carry ``magic``; DataError naming
    the file and the problem (wrong magic number, truncated or overlong data)."""
    raw = _read_bytes(path, name)
    if len(raw) < 4:
        raise DataError(f"{name}: {path} is truncated ({len(raw)} bytes, no IDX header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{name}: {path} has magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: {path} is truncated (header of {header} bytes, file of {len(raw)})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        what = "truncated" if len(raw) - header < count else "longer than its header says"
        raise DataError(f"{name}: {path} is {what}: header {list(shape)} needs {count} bytes of data, "
                        f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_split(folder: str, split: str, name: str) -> ArrayDataset:
    """One split (``"train"`` or ``"test"``) of an IDX folder as ``x [N, 1, H, W]`` in [0, 1]."""
    stem = SPLITS[split]
    images_path = _find(folder, f"{stem}-images-idx3-ubyte", name)
    labels_path = _find(folder, f"{stem}-labels-idx1-ubyte", name)
    images = read_idx(images_path, IMAGES_MAGIC, name)
    labels = read_idx(labels_path, LABELS_MAGIC, name)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{name}: {images_path} holds {images.shape[0]} images but {labels_path} "
                        f"{labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{name}: {labels_path} holds label {int(labels.max())}, outside [0, {NUM_CLASSES})")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return ArrayDataset(x.contiguous(), torch.from_numpy(labels.astype(np.int64)), NUM_CLASSES, name)


def idx_dataset(name: str, root: str | None):
    """``(train, test)`` of ``name`` (``"fashion-mnist"`` or ``"mnist"``) from the IDX files in ``root``
    (or ``root/<name>``); ``fashion-mnist`` without ``root`` reads Debian's ``DEBIAN_FASHION_MNIST``."""
    if root is None:
        if name == "fashion-mnist" and os.path.isdir(DEBIAN_FASHION_MNIST):
            root = DEBIAN_FASHION_MNIST
        elif name == "fashion-mnist":
            raise DataError("fashion-mnist: no --data-root given and Debian's dataset-fashion-mnist is not installed "
                            f"({DEBIAN_FASHION_MNIST}); `apt-get install dataset-fashion-mnist`, or give the folder "
                            "of the four IDX files")
        else:
            raise DataError(f"{name} is read from local files: give the folder of its four IDX files (data root)")
    if not os.path.isdir(root):
        raise DataError(f"{name}: data root {root} is not a folder")
    nested = os.path.join(root, name)
    folder = nested if os.path.isdir(nested) else root
    return read_split(folder, "train", name), read_split(folder, "test", name)
