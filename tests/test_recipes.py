"""Recipes (clustr_fast.train.recipes) and what they switch on: the paper's settings with their
sources, flags over recipes, QTRADES against the last refresh, the warm start, the Magnet lr steps."""
import json
import os
import subprocess
import sys

import pytest
import torch

import clustr_fast
from clustr_fast.cli import build_parser, main
from clustr_fast.cli import eval as eval_cli
from clustr_fast.cli.train import config_from_args
from clustr_fast.train import TrainConfig, fit, recipes, table
from clustr_fast.train.fit import _magnet_lr
from clustr_fast.train.qtrades import _soft_ce, qtrades_term
from clustr_fast.train.refresh import Clustering

TABLE = {  # the paper's rows: natural, PGD-20, PGD-100 (percent)
    "cifar10-clustr": (87.34, 49.04, 47.76), "cifar10-clustr-qtrades": (91.03, 74.44, 74.04),
    "svhn-clustr": (94.28, 50.78, 50.77), "svhn-clustr-qtrades": (95.06, 84.76, 84.75),
    "cifar100-clustr-qtrades": (69.25, 52.47, 52.40),
}


def test_every_setting_has_a_source_and_every_recipe_resolves():
    assert set(TABLE) < set(recipes.RECIPES)
    for r in recipes.RECIPES.values():
        if r.name == "cifar10-clustr-lip":   # not a row of the paper: checked below
            continue
        for key in [*(k for k in r.train if k not in ("data", "method")), "eval", "paper"]:   # all but the row
            src = r.sources.get(key)
            assert src and ("paper" in src or "official" in src), (r.name, key)
        cfg = r.config(data_root="/data").resolved()
        assert cfg.extra["recipe"] == r.name and cfg.model == "resnet18"
        assert r.eval["step_size"] == pytest.approx(2 / 255) and r.eval["eps"] == pytest.approx(8 / 255)
        assert (r.eval["steps"], r.eval["restarts"]) == (20, 10)


def test_the_papers_settings():
    get = lambda name: recipes.get(name).config().resolved()
    for name, row in TABLE.items():
        assert tuple(recipes.get(name).paper[k] for k in ("natural", "pgd20", "pgd100")) == row
    assert recipes.get("cifar10-clustr-qtrades").paper["adaptive"] == 66.52
    assert recipes.get("svhn-clustr-qtrades").paper["adaptive"] == 78.79
    c10, c10q, sv, svq, c100 = (get(n) for n in TABLE)
    assert (c10.alpha, c10q.alpha, sv.alpha, svq.alpha, c100.alpha) == (12.5, 12.5, 13.0, 10.0, 8.5)
    assert (c10q.qtrades_lambda, svq.qtrades_lambda, c100.qtrades_lambda) == (8.0, 9.7, 2.0)
    for q in (c10q, svq, c100):
        assert q.qtrades_centers == "global" and q.qtrades_step == pytest.approx(10 / 255)
        assert q.qtrades_eps == pytest.approx(8 / 255)
    assert (c10.kmeans_n_init, c10.kmeans_iters) == (1, 20)
    assert all((c.kmeans_n_init, c.kmeans_iters) == (10, 40) for c in (sv, svq, c100))
    assert (c100.top_d, c10.top_d, recipes.get("cifar100-clustr-qtrades").eval["top_d"]) == (20, None, 20)
    assert (c10.epochs_magnet, sv.epochs_magnet, c100.epochs_magnet) == (30, 60, 60)
    assert (c10.augment, sv.augment, c100.augment) == (True, False, True)
    assert all((c.k, c.m, c.d, c.lr, c.epochs_ce, c.lr_ce) == (2, 12, 20, 1e-4, 90, 1e-2)
               for c in (c10, c10q, sv, svq, c100))
    warm = get("svhn-warmstart")
    assert (warm.method, warm.epochs_ce, warm.augment) == ("ce", 90, False)


def _train_args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_flags_given_override_the_recipe_and_no_recipe_keeps_the_defaults():
    cfg = config_from_args(_train_args("--recipe", "svhn-clustr", "--alpha", "3", "-k", "4", "--kmeans-n-init", "2",
                                       "--data-root", "/d"))
    assert (cfg.alpha, cfg.k, cfg.kmeans_n_init, cfg.kmeans_iters, cfg.data, cfg.data_root) == (3.0, 4, 2, 40, "svhn",
                                                                                                "/d")
    cfg = config_from_args(_train_args("--data", "digits"))
    assert cfg == TrainConfig(data="digits", progress=cfg.progress)
    cfg = config_from_args(_train_args("--data", "digits", "--magnet-lr-milestones", "3,5",
                                       "--qtrades-centers", "global"))
    assert cfg.magnet_lr_milestones == (3, 5) and cfg.qtrades_centers == "global"


def test_recipe_list_and_unknown_names(capsys):
    assert main(["train", "--recipe", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in recipes.RECIPES) and "official utils/setups.py" in out
    assert main(["eval", "--recipe", "list"]) == 0
    assert "cifar100-clustr-qtrades" in capsys.readouterr().out
    assert main(["train", "--recipe", "cifar11"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'cifar11'" in err


def test_eval_recipe_settings_under_flags():
    args = build_parser().parse_args(["eval", "ck.pt", "--recipe", "cifar100-clustr-qtrades", "--steps", "100"])
    eval_cli._attack_settings(args)
    assert (args.steps, args.restarts, args.top_d) == (100, 10, 20)
    assert args.step_size == pytest.approx(2 / 255) and args.eps == pytest.approx(8 / 255)
    args = build_parser().parse_args(["eval", "ck.pt"])
    eval_cli._attack_settings(args)
    assert (args.eps, args.steps, args.restarts, args.step_size, args.top_d) == (8 / 255, 20, 10, None, None)


def test_magnet_lr_steps_after_each_milestone():
    assert [_magnet_lr(1.0, e, (30, 60)) for e in (1, 30, 31, 60, 61)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert _magnet_lr(1e-4, 45, ()) == 1e-4


def _tiny_net(d_in=4, d_feat=3, classes=3):
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(d_in, 8), torch.nn.Tanh(), torch.nn.Linear(8, d_feat))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = body, torch.nn.Linear(d_feat, classes)

        def forward(self, x):
            f = self.body(x)
            return self.fc(f), f
    return Net()


@pytest.mark.parametrize("top_d", [None, 2])
def test_global_qtrades_measures_p_against_the_last_refresh(top_d):
    """centers="global": p(.) of the last refresh's centers, its sigma^2 and every class (the batch
    holds two of three); the centers get no gradient; with top_d the term stays finite."""
    net = _tiny_net()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    centers = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    clustering = Clustering(torch.zeros(6, dtype=torch.long), centers, torch.arange(6) // 2, torch.tensor(0.7))
    ids, classes = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 2])      # batch: classes 0 and 2 only
    feats = net(x)[1]
    term = qtrades_term(net, x, feats, ids, classes, eps=0.3, step=0.2, generator=torch.Generator().manual_seed(3),
                        centers="global", clustering=clustering, num_classes=3, top_d=top_d)
    assert torch.isfinite(term)
    # the same term by hand: the adversary's noise and step from the same generator
    gen = torch.Generator().manual_seed(3)
    logp = clustr_fast.soft_cluster_logits(feats, centers, clustering.center_classes, 3, variance=0.7, top_d=top_d)
    x0 = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * 0.3).requires_grad_(True)
    logp0 = clustr_fast.soft_cluster_logits(net(x0)[1], centers, clustering.center_classes, 3, variance=0.7,
                                            top_d=top_d)
    grad, = torch.autograd.grad(_soft_ce(logp.detach(), logp0, -30.0), x0)
    x_adv = torch.minimum(torch.maximum(x0.detach() + 0.2 * grad.sign(), x - 0.3), x + 0.3)
    logp_adv = clustr_fast.soft_cluster_logits(net(x_adv)[1], centers, clustering.center_classes, 3, variance=0.7,
                                               top_d=top_d)
    torch.testing.assert_close(term, _soft_ce(logp, logp_adv, -30.0))
    term.backward()
    assert centers.grad is None or not centers.grad.any()
    assert all(p.grad is not None for p in net.body.parameters())
    with pytest.raises(ValueError, match="clustering"):
        qtrades_term(net, x, feats, ids, classes, eps=0.3, step=0.2, generator=None, centers="global")


def test_init_from_starts_the_magnet_phase_from_the_warm_start_weights(tmp_path):
    warm = fit(TrainConfig(data="digits", method="ce", epochs_ce=1, max_steps=2, out_dir=str(tmp_path / "ce")))
    res = fit(TrainConfig(data="digits", method="clustr", init_from=str(tmp_path / "ce" / "checkpoint.pt"),
                          epochs_magnet=0))
    assert res.config.epochs_ce == 0 and res.history == []
    theirs = warm.classifier.net.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in res.classifier.net.state_dict().items())
    with pytest.raises(ValueError, match="init_from"):
        TrainConfig(data="digits", method="magnet", init_from="x").resolved()


def test_kmeans_n_init_reaches_the_refresh(monkeypatch):
    seen = []
    real = clustr_fast.kmeans_per_group

    def spy(*args, **kw):
        seen.append(kw.get("n_init"))
        return real(*args, **kw)
    monkeypatch.setattr(clustr_fast, "kmeans_per_group", spy)
    fit(TrainConfig(data="digits", method="clustr", epochs_ce=0, epochs_magnet=1, max_steps=1, kmeans_n_init=3,
                    train_size=200, test_size=50))
    assert seen and set(seen) == {3}


def test_bad_reproduction_fields():
    for kw, msg in [({"kmeans_n_init": 0}, "kmeans_n_init"), ({"qtrades_centers": "x"}, "qtrades_centers"),
                    ({"magnet_lr_milestones": (0,)}, "magnet_lr_milestones"), ({"init_from": 3}, "init_from")]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(data="digits", **kw).resolved()
    assert isinstance(recipes.RecipeError("x"), ValueError)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_table_collects_the_eval_jsons_beside_the_papers_numbers(tmp_path):
    run = tmp_path / "cifar10-clustr-qtrades"
    _write(run / "pgd20" / "eval_pgd.json", {"clean_acc": 0.9, "attack_acc": 0.5, "worst_case_acc": 0.4,
                                             "sanity": {"passed": True}})
    _write(run / "pgd100" / "eval_pgd.json", {"clean_acc": 0.9, "attack_acc": 0.45, "worst_case_acc": 0.35})
    _write(run / "adaptive" / "eval_magnet.json", {"clean_acc": 0.9, "attack_acc": 0.3})
    (tmp_path / "cifar10-warmstart").mkdir()
    (tmp_path / "cifar10-warmstart" / "metrics.jsonl").write_text('{"test_acc": 0.5}\n{"test_acc": 0.93}\n')
    assert table.main(["collect", str(tmp_path)]) == 0
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "table1.json").read_text())["rows"]}
    assert set(rows) == {"cifar10-warmstart", "cifar10-clustr-qtrades"}
    q = rows["cifar10-clustr-qtrades"]
    assert (q["natural"], q["pgd20"], q["pgd100"], q["pgd100_worst_case"], q["adaptive"]) == (90, 50, 45, 35, 30)
    assert rows["cifar10-warmstart"]["natural"] == 93.0
    md = (tmp_path / "table1.md").read_text()
    assert "| cifar10-clustr-qtrades | 90.00 (91.03) | 50.00 (74.44) | 45.00 (74.04) | 35.00 | 30.00 (66.52) | - " \
           "| passed |" in md
    assert table.main(["finished", str(tmp_path / "none.pt")]) == 1


@pytest.mark.slow
def test_reproduce_script_runs_and_resumes(tmp_path):
    """scripts/reproduce_table1.sh on tiny SVHN files on the CPU (lip-mlp, one step): every run and
    attack, the table; a second call skips them all."""
    from test_real_data_pipeline import write_svhn

    write_svhn(str(tmp_path / "data" / "svhn"))
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                          "reproduce_table1.sh")
    env = dict(os.environ, DEVICE="cpu", DATASETS="svhn", PYTHON=sys.executable,
               EXTRA_TRAIN="--model lip-mlp --epochs-ce 1 --epochs-magnet 1 --max-steps 1 --m 2 --d 2 --batch-size 8",
               EXTRA_EVAL="--steps 1 --restarts 1 --eps-curve= --no-certify")
    argv = [script, str(tmp_path / "data"), str(tmp_path / "out")]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = json.loads((tmp_path / "out" / "table1.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["svhn-warmstart", "svhn-clustr", "svhn-clustr-qtrades"]
    assert "adaptive" in rows[2] and "pgd100" in rows[1]
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0 and "training" not in second.stdout and "attacking" not in second.stdout
    assert second.stdout.count("skipped") == 8


def test_the_lipschitz_recipe():
    """cifar10-clustr-lip: the bounded backbone with the certified-margin term; every setting has a reason."""
    r = recipes.get("cifar10-clustr-lip")
    for key in (k for k in r.train if k not in ("data", "method")):
        assert r.sources.get(key), key
    cfg = r.config(data_root="/data").resolved()
    assert cfg.model == "lip-resnet" and cfg.margin_weight == 3
    assert cfg.margin_radius == pytest.approx(72 / 255)
