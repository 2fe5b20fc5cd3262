"""Small models and fixtures shared by the attack, certification and Lipschitz tests."""
import importlib
import os

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids thread-pool overhead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def require_torchattacks():
    """The ``torchattacks`` module: skips the test where it is not installed, except under
    ``CLUSTR_FAST_REQUIRE_TORCHATTACKS=1`` (set by .ci/run where ``make install-attacks``
    installed it), where a missing module fails the test instead of skipping it silently."""
    if os.environ.get("CLUSTR_FAST_REQUIRE_TORCHATTACKS") == "1":
        return importlib.import_module("torchattacks")
    return pytest.importorskip("torchattacks")


class LinearNet(nn.Module):
    """``x -> (logits, W x)``: a linear feature map (the logits are unused by cluster heads)."""

    def __init__(self, weight, num_classes):
        super().__init__()
        self.lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.lin.weight.data.copy_(weight)
        self.fc = nn.Linear(weight.shape[0], num_classes)

    def forward(self, x):
        f = self.lin(x)
        return self.fc(f), f
