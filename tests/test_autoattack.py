"""The evaluation's default attacks against AutoAttack on a trained cluster model.

ClusTR's published robustness collapsed under AutoAttack because its evaluation attacked
probability sums (gradient masking). Here the evaluation's own worst case (PGD on cross-entropy
and the margin attack against the top 3 other classes, 20 steps, 10 restarts, in log space: the
defaults of ``full_evaluation`` and ``clustr-fast eval``) must be as strong as torchattacks'
standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on a ClusTR model trained on the digits.
"""
import pytest
import torch

from clustr_fast.data import load_dataset
from clustr_fast.robust import attacks
from clustr_fast.robust.evaluate import DEFAULT_TARGETS, attack_accuracy
from clustr_fast.train import TrainConfig, fit
from clustr_fast.train.checkpoint import load_checkpoint
from robust_helpers import require_torchattacks


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    res = fit(TrainConfig(data="digits", method="clustr", epochs_ce=3, epochs_magnet=3, seed=1,
                          out_dir=str(tmp_path_factory.mktemp("aa"))))
    model, _ = load_checkpoint(res.checkpoint)
    _, test = load_dataset("digits", None, 0)
    return model, test.x[:100], test.y[:100]


def test_default_evaluation_is_as_strong_as_autoattack(digits_model):
    """Measured 2026-11-26 on 8 such models (100 test digits, eps 0.05 and 0.1): with 3 targets the
    worst case equalled AutoAttack in all 16 cases; untargeted, it left 1-2 samples more standing
    in 7 of them (docs/evaluation.md). This model (seed 1, eps 0.1) is one of the 7: the test fails
    with an untargeted margin attack (+2 samples) or a PGD step of eps/16 instead of eps/4 (+6)."""
    require_torchattacks()
    model, x, y = digits_model
    eps = 0.1
    common = dict(eps=eps, steps=20, restarts=10, num_classes=10)
    clean = float((model(x).argmax(1) == y).float().mean())
    _, ok_ce = attack_accuracy(model, x, y, attack="pgd", **common)
    _, ok_margin = attack_accuracy(model, x, y, attack="margin", targets=DEFAULT_TARGETS, **common)
    worst = float((ok_ce & ok_margin).float().mean())
    aa, ok_aa = attacks.torchattacks_accuracy(model, x, y, eps=eps, attack="autoattack", n_classes=10)
    assert clean > 0.8 and aa < clean - 0.2  # a model worth attacking, and an eps that hurts it
    assert worst <= aa + 1.0 / len(y), (worst, aa)  # at most one sample more survives our attacks
    assert (ok_ce & ok_margin & ~ok_aa).sum() <= 1
