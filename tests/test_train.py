"""Training: every method learns on moons and digits, resume is exact, checkpoints
load, the public ops are what training calls, QTRADES stays in its ball."""
import json
import os
import pathlib

import pytest
import torch

import clustr_fast
from clustr_fast.data import load_dataset
from clustr_fast.nn import SoftClusterHead
from clustr_fast.train import ClusterClassifier, TrainConfig, fit, load_checkpoint
from clustr_fast.train.augment import random_crop_flip
from clustr_fast.train.config import ConfigError
from clustr_fast.train.qtrades import _soft_ce, adversary, qtrades_term

SMALL = dict(epochs_ce=3, epochs_magnet=3, max_steps=6, m=4, d=10, lr=1e-3)
DIGITS = dict(train_size=240, test_size=100, lr_ce=5e-3)
TIMING_KEYS = {"epoch_s", "train_s", "eval_s", "step_s", "loss_s", "embed_s", "kmeans_s", "monitor_s",
               "cluster_frac", "full_epoch_s_est"}


def small(data, method, **kw):
    return TrainConfig(data=data, method=method, **{**SMALL, **(DIGITS if data == "digits" else {}), **kw})


@pytest.mark.parametrize("data", ["moons", "digits"])
@pytest.mark.parametrize("method", ["ce", "magnet", "clustr", "clustr-qtrades"])
def test_each_method_trains_and_its_loss_falls(data, method):
    result = fit(small(data, method))
    h = result.history
    phases = [r["phase"] for r in h]
    if method == "ce":
        assert phases == ["ce"] * 3 and result.classifier.head is None
        assert h[-1]["train_loss"] < 0.9 * h[0]["train_loss"]
    else:
        magnet = [r for r in h if r["phase"] == "magnet"]
        assert phases == (["ce"] * 3 if method != "magnet" else []) + ["magnet"] * 3
        # the Magnet loss of the whole training set against its refreshed clusters
        assert magnet[-1]["full_loss"] < magnet[0]["full_loss_start"] - 0.3
        head = result.classifier.head
        assert isinstance(head, SoftClusterHead)
        nc = result.classifier.num_classes
        assert head.centers.shape[0] == 2 * nc and torch.equal(head.center_classes, torch.arange(2 * nc) // 2)
        for r in magnet:
            assert 0 < r["cluster_frac"] < 1 and r["loss_s"] > 0 and r["kmeans_s"] > 0 and r["variance"] > 0
        if method == "clustr-qtrades":
            assert all(r["qtrades_loss"] > 0 for r in magnet)
    assert h[-1]["test_acc"] > {"moons": 0.75, "digits": 0.4}[data]     # chance: 0.5 and 0.1
    assert not result.classifier.training and result.checkpoint is None


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One small ClusTR run on digits with a checkpoint, shared by the tests below."""
    return fit(small("digits", "clustr", top_d=4, out_dir=str(tmp_path_factory.mktemp("run"))))


def test_classifier_interface(digits_run):
    clf = digits_run.classifier
    _, test = load_dataset("digits")
    x = test.x[:16]
    logp = clf(x)
    assert logp.shape == (16, 10) and torch.allclose(logp.exp().sum(1), torch.ones(16), atol=1e-5)
    assert clf.features(x).shape == (16, 64)
    assert torch.equal(clf.predict(x), logp.argmax(1))
    assert clf.method == "clustr" and clf.head.top_d == 4 and clf.head.variance > 0
    direct = clustr_fast.soft_cluster_logits(clf.features(x), clf.head.centers, clf.head.center_classes, 10,
                                             variance=float(clf.head.variance), top_d=4)
    assert torch.allclose(logp, direct)


def test_training_goes_through_the_public_ops(monkeypatch):
    calls = {"magnet_loss_batch": 0, "kmeans_per_group": 0, "cluster_variance": 0}
    for name in calls:
        original = getattr(clustr_fast, name)

        def counted(*a, _name=name, _original=original, **kw):
            calls[_name] += 1
            return _original(*a, **kw)
        monkeypatch.setattr(clustr_fast, name, counted)
    fit(TrainConfig(data="moons", method="magnet", epochs_magnet=2, max_steps=3, m=2, d=5))
    assert calls["magnet_loss_batch"] == 6
    assert calls["kmeans_per_group"] == 3          # before the first epoch and after each
    assert calls["cluster_variance"] >= 3


def _params(clf):
    return {k: v.clone() for k, v in clf.state_dict().items()}


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_after", [2, 4])
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, stop_after):
    cfg = dict(data="moons", method="clustr-qtrades", epochs_ce=2, epochs_magnet=3, max_steps=4, m=2, d=8, seed=5)
    full = fit(TrainConfig(**cfg, out_dir=str(tmp_path / "full")))

    def stop(record):
        if record["global_epoch"] == stop_after:
            raise Interrupt
    with pytest.raises(Interrupt):
        fit(TrainConfig(**cfg, out_dir=str(tmp_path / "cut")), callback=stop)
    seen = []
    resumed = fit(TrainConfig(**cfg, out_dir=str(tmp_path / "cut")), callback=lambda r: seen.append(r["global_epoch"]))
    assert seen == list(range(stop_after + 1, 6))            # finished epochs are not repeated
    a, b = _params(full.classifier), _params(resumed.classifier)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in h]
    assert strip(full.history) == strip(resumed.history)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["global_epoch"] for s in lines] == [1, 2, 3, 4, 5]
    # a finished run resumes to nothing left to do
    again = fit(TrainConfig(**cfg, out_dir=str(tmp_path / "cut")), callback=lambda r: seen.append(-1))
    assert -1 not in seen and torch.equal(_params(again.classifier)["head.centers"], b["head.centers"])


def test_checkpoint_round_trip_and_atomic_files(digits_run, tmp_path):
    result = digits_run
    out = pathlib.Path(result.checkpoint).parent
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.csv", "metrics.jsonl"]
    clf, config = load_checkpoint(result.checkpoint)
    assert isinstance(clf, ClusterClassifier) and not clf.training
    assert config["method"] == "clustr" and config["k"] == 2 and config["top_d"] == 4
    state = torch.load(result.checkpoint, weights_only=True)
    assert {"net", "centers", "center_classes", "variance", "k", "top_d", "config"} <= state.keys()
    _, test = load_dataset("digits")
    assert torch.allclose(clf(test.x[:32]), result.classifier(test.x[:32]))
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and "cluster_frac" in csv_lines[0] and "test_acc" in csv_lines[0]
    ce_clf, ce_cfg = load_checkpoint(fit(small("moons", "ce", out_dir=str(tmp_path / "ce"))).checkpoint)
    assert ce_clf.head is None and ce_cfg["method"] == "ce"
    with pytest.raises(FileNotFoundError, match="`path`"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a clustr_fast checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))


def test_resume_refuses_another_configuration(tmp_path):
    fit(small("moons", "ce", out_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="lr_ce"):
        fit(small("moons", "ce", out_dir=str(tmp_path), lr_ce=0.5))
    fresh = fit(small("moons", "ce", out_dir=str(tmp_path), lr_ce=0.5, resume=False))
    assert len(fresh.history) == 3


@pytest.mark.parametrize("field,value,match", [
    ("method", "trades", "`method`"), ("k", 0, "`k`"), ("m", 1, "`m`"), ("d", 1, "`d`"),
    ("lr", -1.0, "`lr`"), ("epochs_ce", -1, "`epochs_ce`"), ("device", "tpu", "`device`"),
    ("alpha", float("nan"), "`alpha`"), ("top_d", 0, "`top_d`"), ("data", "imagenet", "`data`")])
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{field: value}).resolved()


def test_config_defaults_and_data_mismatch():
    c = TrainConfig(data="cifar10", method="clustr-qtrades").resolved()
    assert (c.model, c.epochs_ce, c.epochs_magnet, c.lr, c.lr_ce, c.alpha) == ("resnet18", 90, 30, 1e-4, 1e-2, 12.5)
    assert (c.qtrades_lambda, c.qtrades_eps, c.qtrades_step, c.augment) == (8.0, 8 / 255, 8 / 255, True)
    assert TrainConfig(data="svhn", method="clustr-qtrades").resolved().alpha == 10.0
    s = TrainConfig(data="digits", method="magnet").resolved()
    assert s.epochs_ce == 0 and s.epochs_magnet == 20
    with pytest.raises(ConfigError, match="dry run"):
        TrainConfig(data="digits", dry_run=True).resolved()
    with pytest.raises(ConfigError, match="'cnn' takes"):
        fit(TrainConfig(data="moons", model="cnn"))
    with pytest.raises(ConfigError, match="`top_d`"):
        fit(TrainConfig(data="moons", top_d=5, epochs_ce=0, epochs_magnet=0))
    with pytest.raises(TypeError, match="`config`"):
        fit({"data": "moons"})


def test_qtrades_adversary_stays_in_the_ball_and_raises_the_loss(digits_run):
    clf = digits_run.classifier
    net = clf.net
    head = SoftClusterHead(clf.head.centers, clf.head.center_classes, 10, float(clf.head.variance))  # all centers
    _, test = load_dataset("digits")
    x = test.x[:64]
    eps = 0.1
    logp = head(net(x)[1]).detach()
    gen = torch.Generator().manual_seed(0)
    x_adv = adversary(net, x, logp, head.centers, head.center_classes, 10, float(head.variance),
                      eps=eps, step=eps, generator=gen)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    ce = lambda z: _soft_ce(logp, head(net(z)[1])).item()
    # the adversary's own start: the same draw from the same seed, projected as it projects
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * eps
    start = torch.maximum(torch.minimum(x + noise, x + eps), x - eps).clamp(0, 1)
    assert ce(x_adv) > ce(start) + 1e-3
    # up the gradient, not down: the opposite signed step from the same start does less harm
    z = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_soft_ce(logp, head(net(z)[1])), z)
    down = torch.maximum(torch.minimum(start - eps * g.sign(), x + eps), x - eps).clamp(0, 1)
    assert ce(x_adv) > ce(down) + 1e-3
    # the training term is the CE at x_adv: above its value at eps = 0 (x_adv = x, the entropy)
    ids, classes = test.y[:64], torch.arange(10)
    feats = net(x)[1]
    term = lambda e: qtrades_term(net, x, feats, ids, classes, eps=e, step=e,
                                  generator=torch.Generator().manual_seed(1)).item()
    assert term(eps) > term(0.0) + 1e-3


def test_random_crop_flip_moves_whole_images():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6) + 1
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(2):
        crops = [padded[n, :, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        crops += [c.flip(-1) for c in crops]
        assert any(torch.equal(out[n], c) for c in crops)


@pytest.mark.slow
def test_digits_clustr_defaults_reach_95_percent_within_two_minutes():
    result = fit(TrainConfig(data="digits", method="clustr"))
    assert result.history[-1]["test_acc"] >= 0.95
    assert result.seconds < 120


def test_embed_and_accuracy_in_batches():
    """Batches of 7 rows give the one-pass results; the network runs in eval mode (no batch-norm
    statistics updated) and gets its mode back."""
    from clustr_fast.train.refresh import accuracy, embed

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.bn = torch.nn.BatchNorm1d(4)
            self.modes = []

        def forward(self, x):
            self.modes.append(self.training)
            f = self.bn(self.lin(x))
            return f[:, :2], f

    torch.manual_seed(0)
    net = Net().train()
    x = torch.randn(30, 3)
    y = torch.randint(0, 2, (30,))
    stats = net.bn.running_mean.clone()
    feats = embed(net, x, "cpu", batch_size=7)
    assert net.training and not any(net.modes) and len(net.modes) == 5
    assert torch.equal(net.bn.running_mean, stats)
    net.eval()
    whole = net(x)[1].detach()
    torch.testing.assert_close(feats, whole)
    net.train()

    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)[0]

    model = Scores().train()
    with torch.no_grad():
        net.eval()
        want = float((net(x)[0].argmax(1) == y).float().mean())
        net.train()
    assert accuracy(model, x, y, "cpu", batch_size=7) == pytest.approx(want)
    assert model.training
