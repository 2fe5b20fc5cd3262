"""``clustr-fast train``: runs end to end; bad input gives one line, not a traceback."""
import json

import pytest
import torch

from clustr_fast.cli import main

TINY = ["--epochs-ce", "1", "--epochs-magnet", "1", "--max-steps", "3", "--m", "2", "--d", "5", "--quiet"]


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:           # argparse errors exit
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_checkpoint_and_metrics(tmp_path, capsys):
    code, out, err = run(["train", "--data", "moons", "--method", "clustr", "--out-dir", str(tmp_path),
                          "--epochs-ce", "1", "--epochs-magnet", "2", "--max-steps", "3", "--m", "2", "--d", "5"],
                         capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[0].lstrip().startswith("ce") and "refresh+loss" in lines[1]
    assert lines[-1].startswith("trained clustr on moons (mlp): test acc") and "checkpoint.pt" in lines[-1]
    records = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["ce", "magnet", "magnet"]
    assert "cluster_frac" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["finished"] and state["config"]["method"] == "clustr"
    # running again resumes a finished run: nothing to train
    code, out, _ = run(["train", "--data", "moons", "--method", "clustr", "--out-dir", str(tmp_path),
                        "--epochs-ce", "1", "--epochs-magnet", "2", "--max-steps", "3", "--m", "2", "--d", "5"],
                       capsys)
    assert code == 0 and out.strip().splitlines()[0].startswith("trained clustr")


def test_dry_run_times_a_cifar_sized_epoch_on_cpu(capsys):
    code, out, err = run(["train", "--dry-run", "--method", "clustr", "--max-steps", "1", "--train-size", "20",
                          "--test-size", "8", "--batch-size", "8", "--m", "2", "--d", "4", "-k", "1", "--epochs-ce", "1",
                          "--epochs-magnet", "1"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "full epoch ~" in lines[0] and "full epoch ~" in lines[1]
    assert lines[-1].startswith("trained clustr on synthetic cifar10 (resnet18)")


@pytest.mark.parametrize("argv,message", [
    (["--data", "imagenet"], "argument --data: invalid choice"),
    (["--data", "moons", "--epochs-ce", "x"], "argument --epochs-ce: invalid int value"),
    (["--data", "moons", "--epochs-ce", "-1"], "--epochs-ce must be an int >= 0"),
    (["--data", "moons", "-k", "0"], "--k must be an int >= 1"),
    (["--data", "moons", "--lr", "0"], "--lr must be a finite number > 0"),
    (["--data", "moons", "--model", "cnn"], "model 'cnn' takes [N, C, 8, 8] images"),
    (["--data", "digits", "--top-d", "50"], "--top-d=50 exceeds the 20 cluster centers"),
    (["--data", "digits", "--dry-run"], "a dry run times 32x32 images"),
    (["--method", "clustr"], "--data is required"),
    (["--data", "cifar10"], "give their folder"),
    (["--data", "svhn", "--data-root", "/nonexistent/folder"], "is not a folder"),
])
def test_bad_input_gives_one_line(argv, message, capsys):
    code, out, err = run(["train", *TINY, *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert err.startswith("clustr-fast train: error: ")


def test_missing_data_files_give_one_line(tmp_path, capsys):
    code, _, err = run(["train", "--data", "cifar100", "--data-root", str(tmp_path), *TINY], capsys)
    assert code == 2 and err.count("\n") == 1 and "missing file" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_unavailable_device_gives_one_line(capsys):
    code, _, err = run(["train", "--data", "moons", "--device", "cuda", *TINY], capsys)
    assert code == 2 and err.count("\n") == 1 and "--device 'cuda' is not available" in err
