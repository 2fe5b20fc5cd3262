"""Certificates (Theorem 1) against attacks, certified-accuracy curves, the margin certificate."""
import math

import pytest
import torch

from clustr_fast.nn import SoftClusterHead
from clustr_fast.robust.attacks import pgd
from clustr_fast.robust.certify import (NearestCenterScores, attack_certified, certified_accuracy, certify,
                                        radius_grid)
from clustr_fast.train.classifier import ClusterClassifier
from robust_helpers import one_thread, LinearNet  # noqa: F401  (one_thread: autouse fixture)


def cluster_model(weight, centers, classes, num_classes):
    head = SoftClusterHead(centers, classes, num_classes, 0.5)
    return ClusterClassifier(LinearNet(weight, num_classes).double(), head, "clustr", num_classes).eval()


def identity_model():
    """Features = inputs (L = 1): the sound radius is the exact L2 distance to the cell border."""
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    return cluster_model(torch.eye(2, dtype=torch.float64), centers, torch.arange(3), 3)


def points(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 - 0.5


def test_lipschitz_of_a_linear_feature_map_is_its_spectral_norm():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    model = cluster_model(w, torch.randn(2, 3, generator=g, dtype=torch.float64), torch.arange(2), 2)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    cert = certify(model, x, model.predict(x))
    w_used = model.net.lin.weight.detach()                     # w rounded through the float32 layer
    assert cert.lipschitz == pytest.approx(float(torch.linalg.matrix_norm(w_used, ord=2)), rel=1e-9)


def test_sound_radius_is_tight_no_attack_inside_and_attacks_just_outside():
    model = identity_model()
    x = points()
    y = NearestCenterScores(model)(x).argmax(1)
    cert = certify(model, x, y)
    assert cert.lipschitz == pytest.approx(1.0)
    assert bool(cert.correct.all())
    attacked, flipped = attack_certified(model, x, y, cert, steps=30, clip=None)
    assert attacked == x.shape[0] and flipped == 0
    r = cert.radii.clone()
    outside = pgd(NearestCenterScores(model), x, y, eps=r * 1.01, steps=20, loss="margin", targets=2,
                  norm="l2", clip=None)
    assert bool(outside.fooled.all())                       # the radius is exact for L = 1


def test_paper_shortcut_can_overstate_and_be_attacked():
    # x = (0,4) is nearest to mu_1 = (0,0). The nearest other-class center (6,4)
    # (d = 36) has its bisector 20/(2 sqrt 52) = 1.387 away; the farther center
    # (0,10.1) (d = 37.21) has its bisector 21.21/20.2 = 1.05 away.
    centers = torch.tensor([[0.0, 0.0], [6.0, 4.0], [0.0, 10.1]], dtype=torch.float64)
    model = cluster_model(torch.eye(2, dtype=torch.float64), centers, torch.tensor([0, 1, 2]), 3)
    x = torch.tensor([[0.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([0])
    cert = certify(model, x, y)
    assert cert.radii_paper[0] > cert.radii[0]
    res = pgd(NearestCenterScores(model), x, y, eps=float(cert.radii_paper[0]) * 0.99, steps=30,
              loss="margin", targets=2, norm="l2", clip=None)
    assert bool(res.fooled.all())                            # the paper's radius is not a certificate
    assert float(cert.radii[0]) == pytest.approx(1.05)
    assert float(cert.radii_paper[0]) == pytest.approx(20 / (2 * math.sqrt(52)))


def test_certified_accuracy_curve_by_hand():
    radii = torch.tensor([0.0, 0.5, 1.0, 2.0, math.inf])
    correct = torch.tensor([True, True, False, True, True])
    assert certified_accuracy(radii, correct, [0.0, 0.5, 1.5, 10.0]) == [0.6, 0.4, 0.4, 0.2]
    grid = radius_grid(radii, correct, points=5)
    assert grid[0] == 0.0 and grid[-1] == pytest.approx(2.1)
    with pytest.raises(ValueError, match="same shape"):
        certified_accuracy(radii, correct[:3], [0.0])


def test_margin_certificate_of_a_cross_entropy_model_is_sound():
    g = torch.Generator().manual_seed(2)
    net = LinearNet(torch.randn(3, 2, generator=g, dtype=torch.float64), 4).double()
    model = ClusterClassifier(net, None, "ce", 4).eval()
    x = torch.randn(50, 2, generator=g, dtype=torch.float64)
    y = model.predict(x)
    cert = certify(model, x, y)
    assert cert.kind == "margin"
    # exact distance to the nearest decision border of the linear classifier z = A x + b
    a = net.fc.weight.detach() @ net.lin.weight.detach()
    z = model(x).detach()
    exact = torch.tensor([min(float((z[i, y[i]] - z[i, j]) / (a[y[i]] - a[j]).norm())
                             for j in range(4) if j != y[i]) for i in range(50)])
    assert bool((cert.radii <= exact * (1 + 1e-9)).all())
    attacked, flipped = attack_certified(model, x, y, cert, steps=30, clip=None)
    assert attacked > 0 and flipped == 0


def test_margin_certificate_is_tight_for_opposite_logit_rows():
    """z = (x_1, -x_1): L = ||A||_2 = sqrt(2) and ||a_1 - a_2|| = 2 = sqrt(2) L, the worst case of
    margin / (sqrt(2) L). The certificate then equals the exact distance |x_1| to the border:
    a smaller factor would overstate it, a larger one understate it."""
    net = LinearNet(torch.eye(2, dtype=torch.float64), 2).double()
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        net.fc.bias.zero_()
    model = ClusterClassifier(net, None, "ce", 2).eval()
    x = points(40, seed=3) - 1.5
    y = model.predict(x)
    cert = certify(model, x, y)
    assert cert.kind == "margin" and cert.lipschitz == pytest.approx(math.sqrt(2.0), rel=1e-6)
    torch.testing.assert_close(cert.radii, x[:, 0].abs(), rtol=2e-6, atol=0)


def test_certify_checks_its_lipschitz_argument():
    model = identity_model()
    x = points(5)
    with pytest.raises(ValueError, match="`lipschitz`"):
        certify(model, x, model.predict(x), lipschitz=-1.0)


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    from clustr_fast.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("ckpt")
    res = fit(TrainConfig(data="digits", method="clustr", epochs_ce=1, epochs_magnet=1, train_size=200,
                          test_size=30, seed=0, out_dir=str(out)))
    return res.checkpoint


def test_eval_and_certify_commands_write_json_and_png(digits_checkpoint, tmp_path, capsys):
    import json
    import os

    from clustr_fast.cli import main

    out = str(tmp_path)
    assert main(["eval", digits_checkpoint, "--steps", "3", "--restarts", "1", "--test-size", "30",
                 "--eps-curve", "0,0.5", "--eps", "8/255", "--out", out]) == 0
    with open(os.path.join(out, "eval_pgd.json")) as fh:
        ev = json.load(fh)
    assert 0 <= ev["attack_acc"] <= ev["clean_acc"] <= 1
    assert ev["sanity"]["certified_vs_attacked"]["certified_and_attacked"] == 0
    assert os.path.getsize(os.path.join(out, "eval_pgd_eps_curve.png")) > 0
    assert main(["certify", digits_checkpoint, "--test-size", "30", "--attack-steps", "5", "--out", out]) == 0
    with open(os.path.join(out, "certify.json")) as fh:
        cert = json.load(fh)
    assert cert["lipschitz"] > 0 and cert["certified_and_attacked"] == 0
    assert os.path.getsize(os.path.join(out, "certify.png")) > 0
    assert "certified-and-attacked 0" in capsys.readouterr().out


def test_eval_command_errors_are_one_line(digits_checkpoint, tmp_path, capsys):
    from clustr_fast.cli import main

    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", digits_checkpoint, "--eps", "abc"])
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        assert main(["eval", digits_checkpoint, "--attack", "autoattack"]) == 2
        assert "torchattacks" in capsys.readouterr().err
