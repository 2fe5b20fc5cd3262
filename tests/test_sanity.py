"""The evaluation's sanity checks pass on honest cases and fail on the faults they exist to catch."""
import torch
from torch import nn

from clustr_fast.robust import sanity
from robust_helpers import one_thread  # noqa: F401  (one_thread: autouse fixture)


class Linear2(nn.Module):
    """Log-probabilities of a linear 2-class model: input gradients everywhere."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return torch.log_softmax(self.fc(x), 1)


class Masked(Linear2):
    """The same decisions through a piecewise-constant map: every input gradient is 0 (masking)."""

    def forward(self, x):
        z = super().forward(x)
        flat = torch.log(torch.nn.functional.one_hot(z.argmax(1), 2).double() * 0.98 + 0.01)
        return flat + 0.0 * x.sum(1, keepdim=True)  # on the graph, with a zero gradient


def _data():
    x = torch.tensor([[1.0, 0.3], [2.0, -1.0], [-1.5, 0.2], [-0.5, 2.0]], dtype=torch.float64)
    return x, torch.tensor([0, 0, 1, 1])


def test_chance_check():
    y = torch.tensor([0, 1, 1, 1])  # majority rate 0.75
    assert sanity.majority_rate(y, 3) == 0.75
    assert sanity.chance_check([[0.0, 1.0], [0.5, 0.78]], y, 3)["passed"]
    assert not sanity.chance_check([[0.0, 1.0], [0.5, 0.85]], y, 3)["passed"]


def test_gradient_check_flags_masked_gradients():
    x, y = _data()
    ok = sanity.gradient_check(Linear2(), x, y, ["margin", "ce"])
    assert ok["passed"] and ok["nonzero_share"] == {"margin": 1.0, "ce": 1.0}
    masked = sanity.gradient_check(Masked(), x, y, ["margin", "ce"])
    assert not masked["passed"] and masked["nonzero_share"]["margin"] == 0.0
    assert masked["below_min_share"] == ["ce", "margin"]


def test_strength_check_flags_a_stronger_attack_that_does_worse(monkeypatch):
    x, y = _data()
    honest = sanity.strength_check(Linear2(), x, y, eps=0.6, steps=4, restarts=2, norm="l2", clip=None)
    assert honest["passed"] and len(honest["runs"]) == 3
    accs = iter([0.5, 0.5, 0.75])  # the strongest run keeps more samples correct: a broken attack
    monkeypatch.setattr(sanity, "robust_accuracy", lambda *a, **k: (next(accs), None))
    assert not sanity.strength_check(Linear2(), x, y, eps=0.6, steps=4, restarts=2, tol=0.01)["passed"]


def test_certified_attack_check():
    assert sanity.certified_attack_check(10, 0)["passed"]
    assert not sanity.certified_attack_check(10, 1)["passed"]
