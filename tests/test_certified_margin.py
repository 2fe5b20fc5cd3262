"""Certified-margin term: its minimum is the sound radius, it is differentiable, and the recipe
certifies (attacks at each certified radius flip nothing)."""
import pytest
import torch

import clustr_fast
from clustr_fast.robust.certify import attack_certified, certify
from clustr_fast.train.certified_margin import (bisector_margins, certified_margin_batch, certified_margin_loss,
                                                train_lipschitz_clustr)
from robust_helpers import one_thread  # noqa: F401  (one_thread: autouse fixture)


def _problem(n=60, c=6, f=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, f, generator=g, dtype=torch.float64)
    centers = torch.randn(c, f, generator=g, dtype=torch.float64)
    classes = torch.arange(c) // 2
    labels = torch.randint(0, c // 2, (n,), generator=g)
    return feats, centers, classes, labels


@pytest.mark.parametrize("lip", [1.0, 2.5])
def test_hard_minimum_is_the_sound_radius_of_correct_samples(lip):
    feats, centers, classes, labels = _problem()
    b, a = bisector_margins(feats, centers, classes, labels)
    assert bool((classes[a] == labels).all())
    nearest = clustr_fast.pairwise_sqdist(feats, centers).argmin(1)
    correct = classes[nearest] == labels
    assert int(correct.sum()) > 5 and int((~correct).sum()) > 5
    radius = clustr_fast.certified_radius(feats, centers, classes, lip)
    assert torch.allclose(b.min(1).values[correct] / lip, radius[correct], rtol=1e-10, atol=1e-12)
    assert bool((b.min(1).values[~correct] < 0).all())          # misclassified: some bisector crossed
    r = 0.7
    loss = certified_margin_loss(feats, centers, classes, labels, lipschitz=lip, radius=r, reduction="none")
    assert torch.allclose(loss[correct], torch.relu(r - radius[correct]) * lip)


def test_soft_minimum_never_exceeds_the_hard_one():
    feats, centers, classes, labels = _problem(seed=1)
    hard = certified_margin_loss(feats, centers, classes, labels, lipschitz=1.0, radius=0.5, reduction="none")
    soft = certified_margin_loss(feats, centers, classes, labels, lipschitz=1.0, radius=0.5, temperature=0.1,
                                 reduction="none")
    assert bool((soft >= hard - 1e-12).all()) and float((soft - hard).max()) > 0
    near = certified_margin_loss(feats, centers, classes, labels, lipschitz=1.0, radius=0.5, temperature=1e-6,
                                 reduction="none")
    assert torch.allclose(near, hard, atol=1e-5)


def test_gradients_are_finite_and_move_the_margin_up():
    feats, centers, classes, labels = _problem(seed=2)
    feats.requires_grad_(True)
    centers.requires_grad_(True)
    loss = certified_margin_loss(feats, centers, classes, labels, lipschitz=1.0, radius=1.0, temperature=0.05)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and torch.isfinite(centers.grad).all()
    with torch.no_grad():
        after = certified_margin_loss(feats - 0.05 * feats.grad / feats.grad.norm(), centers - 0.05 * centers.grad
                                      / centers.grad.norm(), classes, labels, lipschitz=1.0, radius=1.0,
                                      temperature=0.05)
    assert float(after) < float(loss.detach())


def test_no_competitor_costs_nothing_and_gives_zero_gradient():
    feats, centers, _, _ = _problem()
    feats.requires_grad_(True)
    classes = torch.zeros(centers.shape[0], dtype=torch.long)
    labels = torch.zeros(feats.shape[0], dtype=torch.long)
    for t in (0.0, 0.1):
        loss = certified_margin_loss(feats, centers, classes, labels, lipschitz=1.0, radius=1.0, temperature=t)
        loss.backward()
        assert loss.item() == 0 and float(feats.grad.abs().max()) == 0
        feats.grad = None


def test_batch_form_uses_the_cluster_means():
    feats, _, _, _ = _problem(n=40)
    ids = torch.arange(40) % 8
    classes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    means = torch.stack([feats[ids == m].mean(0) for m in range(8)])
    want = certified_margin_loss(feats, means, classes, classes[ids], lipschitz=1.5, radius=0.3)
    got = certified_margin_batch(feats, ids, classes, lipschitz=1.5, radius=0.3)
    assert torch.allclose(got, want)


def test_bad_arguments_name_themselves():
    feats, centers, classes, labels = _problem()
    kw = dict(lipschitz=1.0, radius=0.5)
    with pytest.raises(ValueError, match="`lipschitz`"):
        certified_margin_loss(feats, centers, classes, labels, lipschitz=0.0, radius=0.5)
    with pytest.raises(ValueError, match="`radius`"):
        certified_margin_loss(feats, centers, classes, labels, lipschitz=1.0, radius=-1.0)
    with pytest.raises(ValueError, match="`temperature`"):
        certified_margin_loss(feats, centers, classes, labels, temperature=float("nan"), **kw)
    with pytest.raises(ValueError, match="`reduction`"):
        certified_margin_loss(feats, centers, classes, labels, reduction="max", **kw)
    with pytest.raises(ValueError, match="`labels`"):
        certified_margin_loss(feats, centers, classes, labels + 5, **kw)
    with pytest.raises(ValueError, match="`centers`"):
        certified_margin_loss(feats, centers[:, :3], classes, labels, **kw)
    x = torch.rand(20, 1, 8, 8)
    y = torch.arange(20) % 2
    with pytest.raises(ValueError, match="`model`"):
        train_lipschitz_clustr(x, y, model="cnn", steps=1)
    with pytest.raises(ValueError, match="`k`"):
        train_lipschitz_clustr(x, y, k=11, steps=1)
    with pytest.raises(ValueError, match="`margin_radius`"):
        train_lipschitz_clustr(x, y, margin_radius=-0.1, steps=1)


def test_recipe_certifies_and_its_certificates_survive_attacks():
    from clustr_fast.data import load_dataset

    train, test = load_dataset("digits", seed=0)
    train, test = train.subset(300, 0), test.subset(100, 0)
    res = train_lipschitz_clustr(train.x, train.y, model_kw={"width": 64}, steps=60,
                                 refresh_every=20)
    assert res.lipschitz == 1.0 and len(res.history) == 3
    cert = certify(res.classifier, test.x, test.y)
    assert cert.lipschitz == res.lipschitz
    assert float(cert.correct.float().mean()) > 0.7
    assert float(((cert.radii > 0.1) & cert.correct).float().mean()) > 0.4
    attacked, flipped = attack_certified(res.classifier, test.x, test.y, cert, steps=20, restarts=1)
    assert attacked > 30 and flipped == 0


def test_recipe_runs_the_cnn():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 8, 8, generator=g)
    y = torch.arange(40) % 4
    res = train_lipschitz_clustr(x, y, model="lip-cnn", model_kw={"width": 4}, steps=3, k=1)
    assert res.classifier(x).shape == (40, 4) and res.lipschitz == 1.0


def test_fit_adds_the_term_for_lipschitz_models_and_when_asked():
    from clustr_fast.train import TrainConfig, fit
    from clustr_fast.train.config import LIPSCHITZ_MARGIN_WEIGHT, ConfigError

    base = dict(data="digits", method="magnet", model="lip-mlp", epochs_magnet=1, max_steps=2, train_size=200,
                test_size=50, k=1)
    plain = fit(TrainConfig(**base, margin_weight=0.0))
    assert "margin_loss" not in plain.history[-1]
    res = fit(TrainConfig(**base, margin_weight=2.0, margin_radius=0.3))
    rec = res.history[-1]
    assert rec["margin_loss"] > 0
    assert rec["train_loss"] == pytest.approx(rec["magnet_loss"] + 2.0 * rec["margin_loss"], rel=1e-5)
    default = fit(TrainConfig(**base))             # a model with a proven bound: on by default
    assert default.config.margin_weight == LIPSCHITZ_MARGIN_WEIGHT and default.config.margin_radius == 0.8
    assert default.history[-1]["margin_loss"] > 0
    assert TrainConfig().resolved().margin_weight == 0.0            # digits' cnn has no proven bound
    assert TrainConfig(method="ce", model="lip-mlp").resolved().margin_weight == 0.0
    with pytest.raises(ConfigError, match="`margin_radius`"):
        TrainConfig(margin_radius=-1.0).resolved()
    with pytest.raises(ConfigError, match="`margin_weight`"):
        TrainConfig(margin_weight=-1.0).resolved()


def test_cli_flags_reach_the_config():
    import argparse

    from clustr_fast.cli.train import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--data", "digits", "--model", "lip-cnn", "--margin-weight", "2",
                                         "--margin-radius", "0.3", "--quiet"]))
    assert (cfg.model, cfg.margin_weight, cfg.margin_radius) == ("lip-cnn", 2.0, 0.3)
    cfg = config_from_args(p.parse_args(["--data", "digits", "--quiet"])).resolved()
    assert (cfg.margin_weight, cfg.margin_radius) == (0.0, 0.8)
    cfg = config_from_args(p.parse_args(["--data", "digits", "--model", "lip-cnn", "--quiet"])).resolved()
    assert (cfg.margin_weight, cfg.margin_radius) == (3.0, 0.8)
