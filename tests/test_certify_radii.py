"""`clustr-fast certify --radii`: certified accuracy at exactly the radii asked, printed and in
certify.json, beside the curve; the certified-vs-attacked check still holds at each point's radius."""
import json
import os

import pytest
import torch

from clustr_fast.robust.certify import certified_accuracy, certify
from clustr_fast.robust.evaluate import certificate_report
from robust_helpers import one_thread  # noqa: F401  (autouse fixture)

RADII = [0.1, 0.3, 0.5]


@pytest.fixture(scope="module")
def lip_checkpoint(tmp_path_factory):
    """A Lipschitz ClusTR model on digits with the certified-margin term: nonzero certified accuracy
    at the radii above after a few steps."""
    from clustr_fast.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("lipckpt")
    res = fit(TrainConfig(data="digits", method="magnet", model="lip-mlp", k=1, epochs_magnet=2, max_steps=10,
                          train_size=300, test_size=60, margin_weight=3.0, margin_radius=0.8, seed=0,
                          out_dir=str(out)))
    return res.checkpoint


def test_certify_radii_prints_and_writes_the_certified_accuracy(lip_checkpoint, tmp_path, capsys):
    from clustr_fast.cli import main
    from clustr_fast.cli._common import load_for_eval

    out = str(tmp_path)
    assert main(["certify", lip_checkpoint, "--radii", "0.1,0.3,0.5", "--attack-steps", "10",
                 "--out", out]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(out, "certify.json")) as fh:
        rep = json.load(fh)
    assert [r for r, _ in rep["certified_at"]] == RADII
    accs = [a for _, a in rep["certified_at"]]
    # the same numbers as the certificate itself gives
    classifier, _, test = load_for_eval(lip_checkpoint)
    cert = certify(classifier, test.x, test.y)
    assert accs == pytest.approx(certified_accuracy(cert.radii, cert.correct, RADII))
    assert all(b <= a for a, b in zip(accs, accs[1:])) and accs[0] <= rep["clean_acc_certified_rule"]
    assert rep["certified_attacked"] > 0 and rep["certified_and_attacked"] == 0
    assert len(rep["radii"]) == 50 and os.path.getsize(os.path.join(out, "certify.png")) > 0
    for r, a in rep["certified_at"]:
        assert f"certified accuracy at r = {r:g}: {100 * a:.1f}%" in printed
    assert "certified-and-attacked 0" in printed


def test_certify_without_radii_reports_none(lip_checkpoint, tmp_path):
    from clustr_fast.cli import main

    assert main(["certify", lip_checkpoint, "--attack-steps", "2", "--out", str(tmp_path)]) == 0
    with open(os.path.join(tmp_path, "certify.json")) as fh:
        assert json.load(fh)["certified_at"] == []


def test_bad_radii_are_refused(lip_checkpoint, capsys):
    from clustr_fast.cli import main

    with pytest.raises(SystemExit):
        main(["certify", lip_checkpoint, "--radii", "0.1,abc"])
    assert "--radii" in capsys.readouterr().err
    x = torch.rand(4, 2)
    with pytest.raises(ValueError, match="`at_radii`"):
        certificate_report(None, x, torch.zeros(4, dtype=torch.long), at_radii=[float("nan")])
