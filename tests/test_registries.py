"""One registry each for models and attacks: every list the package shows is read from it."""
import pytest
import torch

from clustr_fast.cli import build_parser
from clustr_fast.models import MODELS, build_model, input_keywords, register_model
from clustr_fast.models.registry import ModelSpec
from clustr_fast.robust import attacks
from clustr_fast.robust.attacks import ATTACKS, register_attack
from clustr_fast.train import TrainConfig


def _choices(argv, dest):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[argv]
    return tuple(next(a for a in sub._actions if a.dest == dest).choices)


def test_cli_lists_come_from_the_registries():
    assert _choices("train", "model") == tuple(MODELS)
    assert _choices("eval", "attack") == tuple(ATTACKS)
    assert attacks.losses() == tuple(a.loss for a in ATTACKS.values() if a.loss)
    assert {"pgd", "margin", "magnet", "official-loss", "autoattack"} <= set(ATTACKS)
    assert [a.name for a in ATTACKS.values() if a.diagnostic] == ["official-loss"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_from_the_inputs_it_declares(name):
    spec = MODELS[name]
    assert isinstance(spec, ModelSpec) and spec.describe_input()
    gen = torch.Generator().manual_seed(0)
    if spec.inputs == "points":
        x = torch.randn(6, 3, generator=gen)
    else:
        side = (spec.image_sizes or (8 * max(spec.image_multiple, 1),))[-1]
        x = torch.rand(6, 1, side, side, generator=gen)
    net = build_model(name, 3, **input_keywords(name, x)).eval()
    logits, feats = net(x)
    assert logits.shape == (6, 3) and feats.shape[0] == 6
    if spec.lipschitz is not None:       # the bound the registry promises is the model's own proof
        assert net.lipschitz_bound() == pytest.approx(spec.lipschitz)


def test_input_keywords_reject_what_a_model_does_not_take():
    with pytest.raises(ValueError, match=r"model 'cnn' takes \[N, C, 8, 8\] images or \[N, C, 28, 28\] images"):
        input_keywords("cnn", torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="model 'mlp' takes"):
        input_keywords("mlp", torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="S divisible by 4"):
        input_keywords("lip-cnn", torch.rand(2, 1, 10, 10))
    kw = input_keywords("lip-cnn", torch.rand(2, 1, 28, 28))
    assert "std" not in kw and kw["image_size"] == 28           # bound 1: centered, not scaled


def test_a_model_registered_in_its_own_module_is_usable_everywhere():
    name = "toy-registered-model"
    try:
        @register_model(name, inputs="points")
        class Toy(torch.nn.Module):
            def __init__(self, num_classes, in_dim=2, mean=None, std=None):
                super().__init__()
                self.fc = torch.nn.Linear(in_dim, num_classes)

            def forward(self, x):
                return self.fc(x), x

        cfg = TrainConfig(data="moons", method="ce", model=name).resolved()
        assert cfg.model == name and isinstance(build_model(name, 2, in_dim=2), Toy)
        with pytest.raises(ValueError, match="already registered"):
            register_model(name, inputs="points")(Toy)
    finally:
        MODELS.pop(name, None)


def test_an_attack_registered_once_runs_in_pgd_and_the_evaluation():
    from clustr_fast.robust.evaluate import attack_accuracy

    name = "toy-registered-attack"
    try:
        register_attack(name, label="toy", reads="log-probabilities", loss="toy-loss",
                        objective=attacks.on_logits(attacks.ce_loss))
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LogSoftmax(1)).eval()
        x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
        ours, ok = attack_accuracy(model, x, y, attack=name, eps=0.3, steps=5, restarts=1)
        ce, ok_ce = attack_accuracy(model, x, y, attack="pgd", eps=0.3, steps=5, restarts=1)
        assert torch.equal(ok, ok_ce) and ours == ce            # the same loss: the same attack
        with pytest.raises(ValueError, match="needs `loss` and `objective`"):
            register_attack("toy-2", label="x", reads="x")
    finally:
        ATTACKS.pop(name, None)


def test_input_statistics_are_float64_accumulated_so_a_resume_matches_at_any_thread_count():
    """A resumed run compares its model keywords with the checkpoint's: float32 sums depend on the
    thread count's order, float64 sums rounded to float32 do not."""
    x = torch.rand(20000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    kw = input_keywords("cnn", x)
    want_mean = float(x.double().mean().float())
    want_std = float(x.double().std().float())
    assert kw["mean"] == [want_mean] and kw["std"] == [want_std]
