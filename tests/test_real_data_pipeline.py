"""The real-data pipeline end to end, on tiny files in the exact on-disk formats of CIFAR-10
(cifar-10-batches-py pickles), CIFAR-100 (cifar-100-python pickles) and SVHN (.mat files).

The loaders read the files pixel for pixel; from the command line, ``train --recipe`` trains the
warm start, then ClusTR and ClusTR+QTRADES from it (``--init-from``), and ``eval --recipe`` and
``certify`` run on the result; a corrupt or missing file is one error line naming it. The
recipes' own ResNet-18 is slow on a CPU: the pipeline overrides it with ``--model lip-mlp`` and
one or two steps per epoch (the GPU run of scripts/reproduce_table1.sh trains the real thing).
"""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from scipy.io import savemat

from clustr_fast.cli import main
from clustr_fast.data import load_dataset

PER_CLASS = 3       # training images per class: k = 2 clusters of a class have >= 3 rows between them


def _pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _pickle(obj, path):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)          # the originals are Python 2 pickles with bytes keys


def write_cifar10(root, per_batch=6, n_test=10):
    """cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta; returns (train, test) arrays."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    parts = []
    for i in range(1, 6):
        data = _pixels(per_batch, i)
        labels = [(per_batch * (i - 1) + j) % 10 for j in range(per_batch)]
        _pickle({b"batch_label": f"training batch {i} of 5".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)]},
                os.path.join(folder, f"data_batch_{i}"))
        parts.append((data, labels))
    test = _pixels(n_test, 9)
    test_labels = [j % 10 for j in range(n_test)]
    _pickle({b"batch_label": b"testing batch 1 of 1", b"labels": test_labels, b"data": test,
             b"filenames": [f"test_{j}.png".encode() for j in range(n_test)]}, os.path.join(folder, "test_batch"))
    _pickle({b"label_names": [f"class{c}".encode() for c in range(10)], b"num_cases_per_batch": per_batch,
             b"num_vis": 3072}, os.path.join(folder, "batches.meta"))
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, (test, np.array(test_labels))


def write_cifar100(root, n_train=20, n_test=10):
    """cifar-100-python/train, test, meta (fine and coarse labels)."""
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    out = []
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        data = _pixels(n, seed)
        fine = [(7 * j) % 100 for j in range(n)]
        _pickle({b"filenames": [f"{name}_{j}.png".encode() for j in range(n)], b"batch_label": name.encode(),
                 b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": data},
                os.path.join(folder, name))
        out.append((data, np.array(fine)))
    _pickle({b"fine_label_names": [f"fine{c}".encode() for c in range(100)],
             b"coarse_label_names": [f"coarse{c}".encode() for c in range(20)]}, os.path.join(folder, "meta"))
    return out


def write_svhn(root, n_train=10 * PER_CLASS, n_test=10):
    """train_32x32.mat, test_32x32.mat: X uint8 [32, 32, 3, N], y [N, 1] with 10 for the digit 0."""
    os.makedirs(root, exist_ok=True)
    out = []
    for name, n, seed in (("train_32x32.mat", n_train, 3), ("test_32x32.mat", n_test, 4)):
        x = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)
        savemat(os.path.join(root, name), {"X": x, "y": y})
        out.append((x, y))
    return out


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cifar10_files_load_pixel_for_pixel(tmp_path):
    (xtr, ytr), (xte, yte) = write_cifar10(str(tmp_path))
    train, test = load_dataset("cifar10", str(tmp_path))
    assert train.x.shape == (30, 3, 32, 32) and test.x.shape == (10, 3, 32, 32) and train.num_classes == 10
    # channel-major rows: pixel (c, h, w) of image i is data[i, 1024 c + 32 h + w]
    assert torch.equal(train.x, torch.from_numpy(xtr).float().div(255).view(-1, 3, 32, 32))
    assert float(train.x[4, 2, 7, 9]) == pytest.approx(xtr[4, 2 * 1024 + 7 * 32 + 9] / 255, abs=1e-7)
    assert train.y.tolist() == ytr.tolist() and test.y.tolist() == yte.tolist()


def test_cifar100_files_load_fine_labels(tmp_path):
    (xtr, ytr), (_, yte) = write_cifar100(str(tmp_path))
    train, test = load_dataset("cifar100", str(tmp_path))
    assert train.num_classes == 100 and train.y.tolist() == ytr.tolist() and test.y.tolist() == yte.tolist()
    assert torch.equal(train.x, torch.from_numpy(xtr).float().div(255).view(-1, 3, 32, 32))


def test_svhn_files_load_with_digit_zero_as_label_zero(tmp_path):
    (xtr, ytr), _ = write_svhn(str(tmp_path))
    train, test = load_dataset("svhn", str(tmp_path))
    assert train.x.shape == (30, 3, 32, 32) and len(test) == 10
    assert train.y.tolist() == [int(v) % 10 for v in ytr[:, 0]]
    assert float(train.x[5, 1, 3, 30]) == pytest.approx(xtr[3, 30, 1, 5] / 255, abs=1e-7)    # X[h, w, c, i]
    assert torch.equal(train.x, torch.from_numpy(xtr.transpose(3, 2, 0, 1).copy()).float().div(255))


def test_recipe_pipeline_from_files_on_the_command_line(tmp_path, capsys):
    """svhn: warm start, ClusTR and ClusTR+QTRADES from it, eval and certify, as
    docs/reproduce.md runs them, with tiny sizes."""
    root, runs = tmp_path / "svhn", tmp_path / "runs"
    write_svhn(str(root))
    tiny = ["--data-root", str(root), "--model", "lip-mlp", "--max-steps", "1", "--quiet"]
    code, out, err = run(["train", "--recipe", "svhn-warmstart", *tiny, "--epochs-ce", "1", "--batch-size", "8",
                          "--out-dir", str(runs / "warm")], capsys)
    assert code == 0, err
    warm = str(runs / "warm" / "checkpoint.pt")
    for recipe in ("svhn-clustr", "svhn-clustr-qtrades"):
        code, out, err = run(["train", "--recipe", recipe, *tiny, "--init-from", warm, "--epochs-magnet", "1",
                              "--m", "2", "--d", "2", "--out-dir", str(runs / recipe)], capsys)
        assert code == 0, err
        assert out.strip().splitlines()[-1].startswith(f"trained {recipe.removeprefix('svhn-')} on svhn (lip-mlp)")
        state = torch.load(runs / recipe / "checkpoint.pt", weights_only=True)
        cfg = state["config"]
        assert state["finished"] and [h["phase"] for h in state["history"]] == ["magnet"]   # no CE epochs
        assert cfg["init_from"] == warm and cfg["epochs_ce"] == 0 and cfg["extra"]["recipe"] == recipe
        assert (cfg["kmeans_n_init"], cfg["kmeans_iters"], cfg["alpha"]) == (
            10, 40, 10.0 if recipe.endswith("qtrades") else 13.0)
    assert cfg["qtrades_centers"] == "global" and cfg["qtrades_step"] == pytest.approx(10 / 255)

    qtrades = str(runs / "svhn-clustr-qtrades" / "checkpoint.pt")
    code, out, err = run(["eval", qtrades, "--recipe", "svhn-clustr-qtrades", "--steps", "1", "--restarts", "1",
                          "--eps-curve", "", "--no-official", "--no-certify", "--no-sanity", "--top-d", "5",
                          "--out", str(runs / "eval")], capsys)
    assert code == 0, err
    result = json.loads((runs / "eval" / "eval_pgd.json").read_text())
    assert result["step_size"] == pytest.approx(2 / 255) and result["eps"] == pytest.approx(8 / 255)
    assert (result["steps"], result["restarts"], result["top_d"], result["n"]) == (1, 1, 5, 10)
    code, out, err = run(["certify", qtrades, "--points", "5", "--attack-steps", "1", "--top-d", "5",
                          "--out", str(runs / "eval")], capsys)
    assert code in (0, 1), err           # 1 only if a certified point was attacked (the check fails)
    cert = json.loads((runs / "eval" / "certify.json").read_text())
    assert cert["top_d"] == 5 and cert["check"]["passed"]


def test_warm_start_recipes_read_cifar_files(tmp_path, capsys):
    write_cifar10(str(tmp_path))
    write_cifar100(str(tmp_path))
    for data in ("cifar10", "cifar100"):
        code, out, err = run(["train", "--recipe", f"{data}-warmstart", "--data-root", str(tmp_path), "--model",
                              "lip-mlp", "--epochs-ce", "1", "--max-steps", "1", "--batch-size", "4", "--quiet"],
                             capsys)
        assert code == 0, err
        assert out.strip().splitlines()[-1].startswith(f"trained ce on {data} (lip-mlp)")


def _one_line(err, *fragments):
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


@pytest.mark.parametrize("data,victim,damage", [
    ("cifar10", "cifar-10-batches-py/data_batch_3", "garbage"),
    ("cifar10", "cifar-10-batches-py/test_batch", "truncate"),
    ("cifar10", "cifar-10-batches-py/data_batch_5", "remove"),
    ("cifar10", "cifar-10-batches-py/data_batch_2", "no data key"),
    ("cifar100", "cifar-100-python/train", "truncate"),
    ("cifar100", "cifar-100-python/test", "remove"),
    ("svhn", "train_32x32.mat", "garbage"),
    ("svhn", "test_32x32.mat", "truncate"),
    ("svhn", "test_32x32.mat", "remove"),
])
def test_corrupt_or_missing_file_is_one_line_naming_it(tmp_path, capsys, data, victim, damage):
    {"cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn}[data](str(tmp_path))
    path = tmp_path / victim
    if damage == "garbage":
        path.write_bytes(os.urandom(3000))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "remove":
        path.unlink()
    else:
        _pickle({b"labels": [0, 1]}, str(path))
    recipe = {"cifar10": "cifar10-warmstart", "cifar100": "cifar100-warmstart", "svhn": "svhn-warmstart"}[data]
    code, _, err = run(["train", "--recipe", recipe, "--data-root", str(tmp_path), "--max-steps", "1", "--quiet"],
                       capsys)
    assert code == 2
    _one_line(err, "clustr-fast train: error:", str(path), "missing file" if damage == "remove" else "cannot read")


def test_init_from_must_be_a_finished_warm_start(tmp_path, capsys):
    root = tmp_path / "svhn"
    write_svhn(str(root))
    tiny = ["--data-root", str(root), "--model", "lip-mlp", "--max-steps", "1", "--quiet", "--epochs-magnet", "1",
            "--m", "2", "--d", "2"]
    code, _, err = run(["train", "--recipe", "svhn-clustr", *tiny, "--init-from", str(tmp_path / "none.pt")], capsys)
    assert code == 2
    _one_line(err, "--init-from", "none.pt", "is not a file")
    code, _, err = run(["train", "--recipe", "svhn-clustr", *tiny, "--init-from", ""], capsys)
    assert code == 2
    _one_line(err, "--init-from must be a checkpoint path")
    code, _, err = run(["train", "--recipe", "svhn-clustr", *tiny, "--kmeans-n-init", "1", "--kmeans-iters", "2",
                        "--out-dir", str(tmp_path / "c"), "--epochs-ce", "1"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--recipe", "svhn-clustr-qtrades", *tiny,
                        "--init-from", str(tmp_path / "c" / "checkpoint.pt")], capsys)
    assert code == 2
    _one_line(err, "--init-from", "holds a 'clustr' run")
    code, _, err = run(["train", "--recipe", "svhn-warmstart", "--data-root", str(root), "--init-from", "x"], capsys)
    assert code == 2
    _one_line(err, "--init-from starts the Magnet phase of clustr or clustr-qtrades")
