"""`clustr-fast demo`: a tiny end-to-end run (reduced sizes) checking the report; the full run is slow."""
import argparse
import json
import os

import pytest
import torch

from clustr_fast.cli import main
from clustr_fast.cli.demo import add_arguments, options_from_args

SMALL = ["--sets", "moons", "--synthetic-epochs", "2", "--digits-epochs", "1", "--train-size", "200",
         "--test-size", "40", "--steps", "3", "--restarts", "2", "--sanity-size", "30",
         "--eps-curve", "0,0.1,0.5", "--lip-steps", "20"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fraction(v):
    return isinstance(v, float) and 0.0 <= v <= 1.0


def _check_report(out, sets):
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    assert set(report["synthetic"]) == set(sets)
    for s in sets:
        assert set(report["synthetic"][s]) == {"magnet", "clustr"}
        for r in report["synthetic"][s].values():
            assert _fraction(r["clean_acc"])
            n = len(r["radii"])
            assert n > 1 and len(r["certified_acc"]) == n and len(r["certified_acc_paper"]) == n
            assert all(_fraction(a) for a in r["certified_acc"] + r["certified_acc_paper"])
            assert all(b <= a for a, b in zip(r["certified_acc"], r["certified_acc"][1:]))
            # the paper's shortcut never certifies less than the sound radius
            assert all(p >= c for p, c in zip(r["certified_acc_paper"], r["certified_acc"]))
            # K = 1: the certified nearest-center rule is the classifier itself
            assert r["certified_acc"][0] <= r["clean_acc"] + 1e-9
    assert set(report["digits"]) == {"ce", "clustr", "clustr-qtrades"}
    for r in report["digits"].values():
        for key in ("clean_acc", "pgd_acc", "margin_acc", "worst_case_acc", "pgd_acc_official_loss"):
            assert _fraction(r[key])
        assert r["worst_case_acc"] <= min(r["pgd_acc"], r["margin_acc"]) <= r["clean_acc"]
        eps = [e for e, _ in r["eps_curve"]]
        accs = [a for _, a in r["eps_curve"]]
        assert eps == sorted(eps) and eps[0] == 0.0
        assert accs[0] == pytest.approx(r["clean_acc"])
        assert all(b <= a for a, b in zip(accs, accs[1:]))
        assert isinstance(r["certified_and_attacked"], int) and r["certified_and_attacked"] == 0
        assert r["seconds"] > 0
    lip = report["lipschitz"]
    assert [r for r, _ in lip["certified_at"]] == [0.1, 0.3, 0.5]
    assert [r for r, _ in report["digits"]["clustr"]["certified_at"]] == [0.1, 0.3, 0.5]
    assert _fraction(lip["clean_acc"]) and all(_fraction(a) for _, a in lip["certified_at"])
    assert lip["lipschitz"] == pytest.approx(1.0)
    assert lip["certified_attacked"] > 0 and lip["certified_and_attacked"] == 0
    for name in ("report.md", "synthetic_moons_certified.png", "digits_eps_curve.png", "digits_certified.png",
                 "digits_lipschitz_certified.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    return report


def test_demo_smoke(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "| method | clean %" in printed and "report.md" in printed
    _check_report(out, ["moons"])
    with open(os.path.join(out, "report.md")) as fh:
        md = fh.read()
    # the certified table: the CNN ClusTR row and the Lipschitz row, clean and at 0.1 / 0.3 / 0.5
    assert "| model | clean % | L bound | cert. % at r = 0.1 | cert. % at r = 0.3 | cert. % at r = 0.5 |" in md
    assert "| CNN ClusTR (cnn) |" in md and "| Lipschitz ClusTR (lip-mlp, 20 steps) |" in md


def test_demo_can_skip_the_lipschitz_model(tmp_path):
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--sets", "moons", "--synthetic-epochs", "1", "--no-digits"]) == 0
    with open(os.path.join(out, "report.json")) as fh:
        assert json.load(fh)["lipschitz"] == {}             # it runs with the digits part only
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert options_from_args(p.parse_args([])).lipschitz is True   # on by default
    opts = options_from_args(p.parse_args(["--no-lipschitz", "--lip-steps", "7", "--certified-radii", "0.2"]))
    assert (opts.lipschitz, opts.lip_steps, opts.certified_radii) == (False, 7, (0.2,))


def test_demo_rejects_unknown_set(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--sets", "spirals"]) == 2
    assert "--sets" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_full(tmp_path):
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out]) == 0
    report = _check_report(out, ["moons", "rings"])
    assert report["seconds"] < 600
    assert dict(report["lipschitz"]["certified_at"])[0.1] > 0.9
    for r in report["digits"].values():
        assert r["sanity"]["passed"]
