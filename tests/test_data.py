"""Data loaders: synthetic sets, digits, and CIFAR/SVHN from tiny files in their formats."""
import os
import pickle

import numpy as np
import pytest
import torch

from clustr_fast.data import ArrayDataset, DataError, load_dataset, random_images


def _check(ds, shape, classes):
    assert isinstance(ds, ArrayDataset)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert tuple(ds.x.shape[1:]) == shape and ds.num_classes == classes
    assert len(ds) == ds.y.shape[0]


@pytest.mark.parametrize("name", ["moons", "rings"])
def test_two_d_sets_are_seeded_balanced_binary(name):
    train, test = load_dataset(name, seed=3)
    _check(train, (2,), 2)
    assert torch.bincount(train.y).tolist() == [500, 500]
    assert not torch.equal(train.x, test.x)
    again, _ = load_dataset(name, seed=3)
    assert torch.equal(train.x, again.x)
    assert not torch.equal(train.x, load_dataset(name, seed=4)[0].x)


def test_digits_split_in_unit_range():
    train, test = load_dataset("digits", seed=0)
    _check(train, (1, 8, 8), 10)
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.x.min() >= 0 and train.x.max() <= 1 and train.x.max() == 1
    assert torch.bincount(test.y).min() >= 35          # stratified


def _cifar_batch(path, n, label_key, classes, rng):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, classes, size=n).tolist()
    with open(path, "wb") as fh:
        pickle.dump({b"data": data, label_key: labels, b"batch_label": b"x"}, fh)
    return data, labels


def test_cifar10_reads_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [_cifar_batch(folder / f"data_batch_{i}", 3, b"labels", 10, rng) for i in range(1, 6)]
    test_data, test_labels = _cifar_batch(folder / "test_batch", 4, b"labels", 10, rng)
    train, test = load_dataset("cifar10", root=str(tmp_path))
    _check(train, (3, 32, 32), 10)
    assert len(train) == 15 and len(test) == 4
    first = torch.from_numpy(parts[0][0][0].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(train.x[0], first)
    assert test.y.tolist() == test_labels
    # the batches' own folder works as root too
    assert torch.equal(load_dataset("cifar10", root=str(folder))[1].x, test.x)


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _, labels = _cifar_batch(folder / "train", 5, b"fine_labels", 100, rng)
    _cifar_batch(folder / "test", 2, b"fine_labels", 100, rng)
    train, test = load_dataset("cifar100", root=str(tmp_path))
    _check(train, (3, 32, 32), 100)
    assert train.y.tolist() == labels and len(test) == 2


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("test", 3)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3], [9], [10]][:n], dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            x_train = x
    train, test = load_dataset("svhn", root=str(tmp_path))
    _check(train, (3, 32, 32), 10)
    assert train.y.tolist() == [0, 1, 2, 3, 9, 0] and len(test) == 3
    expect = torch.from_numpy(x_train[:, :, :, 1].transpose(2, 0, 1).astype(np.float32) / 255)
    assert torch.allclose(train.x[1], expect)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_missing_files_give_one_line_data_error(tmp_path, name):
    with pytest.raises(DataError) as err:
        load_dataset(name, root=str(tmp_path))
    assert "missing file" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="data root"):
        load_dataset(name)
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(name, root=str(tmp_path / "nope"))


def test_malformed_files_and_unknown_names(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


def test_array_dataset_checks_and_subset():
    x, y = torch.rand(10, 2), torch.arange(10) % 3
    ds = ArrayDataset(x, y, 3, "toy")
    sub = ds.subset(4, seed=1)
    assert len(sub) == 4 and sub.subset(10) is sub
    rows = [int((x == r).all(1).nonzero()) for r in sub.x]
    assert torch.equal(sub.y, y[rows])
    with pytest.raises(TypeError, match="`x` must be float32"):
        ArrayDataset(x.double(), y, 3, "toy")
    with pytest.raises(ValueError, match="`y` must lie"):
        ArrayDataset(x, y, 2, "toy")
    with pytest.raises(ValueError, match="rows"):
        ArrayDataset(x[:3], y, 3, "toy")


def test_random_images_have_cifar_shape_and_are_seeded():
    train, test = random_images("cifar100", seed=0, n_train=20, n_test=5)
    _check(train, (3, 32, 32), 100)
    assert len(train) == 20 and len(test) == 5 and 0 <= train.x.min() and train.x.max() <= 1
    assert torch.equal(random_images("cifar100", seed=0, n_train=20, n_test=5)[0].x, train.x)
