"""Cost of the Lipschitz-bounded layers: one training step of an AOL (or SLL) layer against an
unconstrained layer of the same shape.

A step is forward, ``mean(y^2)``, backward and one Adam update, so it includes what the
parametrisation adds: the Gram (dense) or the kernel's self-correlation (conv) that sets the
AOL scale, recomputed at every step, and its backward. Shapes: the dense layers of the digits
recipe (full batch of 1,437 x 64 -> 256, then 256 -> 256), a 512-wide layer, the 3x3 convs of
lip-cnn (8x8) and lip-resnet (32x32), and an SLL conv residual against ``x + conv(relu(conv x))``.
Each pair is two cases, ``aol,...`` (or ``sll,...``) and ``plain,...``, provider "reference"
(plain PyTorch: there is no fused kernel here). The goal is a step at most 1.5x the plain one;
``python benchmarks/bench_lipschitz.py`` prints the ratios.
"""
import os
import statistics
import sys
import time

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from clustr_fast.models.lipschitz_layers import AOLConv2d, AOLLinear, SLLConv2d  # noqa: E402
from common import Case, bench_device, sync  # noqa: E402
from conftest import bench_params  # noqa: E402

GOAL_RATIO = 1.5

# (kind, batch, in, out) for dense; (kind, batch, channels in, channels out, side) for conv
DENSE = [(1437, 64, 256), (1437, 256, 256), (256, 512, 512)]
CONV = [(256, 16, 16, 8), (64, 64, 64, 32)]
SLL = [(64, 32, 32)]     # (batch, channels, side)


class PlainResidual(nn.Module):
    """``x + conv(relu(conv x))``: the unconstrained residual of the SLL layer's shape."""

    def __init__(self, channels):
        super().__init__()
        self.a = nn.Conv2d(channels, channels, 3, padding=1)
        self.b = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


def _layers():
    """``(label, (constrained, plain) builders, input shape)`` for every pair."""
    out = []
    for b, i, o in DENSE:
        out.append((f"dense,B={b},{i}->{o}", ("aol", lambda i=i, o=o: AOLLinear(i, o)),
                    lambda i=i, o=o: nn.Linear(i, o), (b, i)))
    for b, ci, co, s in CONV:
        out.append((f"conv3x3,B={b},{ci}->{co},{s}x{s}", ("aol", lambda ci=ci, co=co: AOLConv2d(ci, co, 3)),
                    lambda ci=ci, co=co: nn.Conv2d(ci, co, 3, padding=1), (b, ci, s, s)))
    for b, c, s in SLL:
        out.append((f"residual3x3,B={b},{c},{s}x{s}", ("sll", lambda c=c: SLLConv2d(c)),
                    lambda c=c: PlainResidual(c), (b, c, s, s)))
    return out


def _make(build, shape):
    def make(dev):
        torch.manual_seed(0)
        layer = build().to(dev)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dev)
        return dict(layer=layer, x=x, opt=torch.optim.Adam(layer.parameters(), lr=1e-3))
    return make


def train_step(layer, x, opt):
    """Forward, ``mean(y^2)``, backward, Adam update."""
    opt.zero_grad(set_to_none=True)
    layer(x).square().mean().backward()
    opt.step()


def _run(provider, t):
    train_step(t["layer"], t["x"], t["opt"])


def _cases():
    cases = []
    for label, (kind, constrained), plain, shape in _layers():
        for name, build in ((kind, constrained), ("plain", plain)):
            cases.append(Case("lipschitz_layer", "train", f"{name},{label}", ("cpu", "cuda"), _make(build, shape),
                              _run, providers=("reference",),
                              note=f"{kind.upper()} vs plain: at most {GOAL_RATIO}x" if name != "plain" else ""))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case,provider", bench_params(CASES))
def test_lipschitz_layer(run_case, case, provider):
    run_case(case, provider)


def step_ratios(device=None, repeats=15, threads=None):
    """``{label: (constrained ms, plain ms, ratio)}``: median step times, interleaved so that load
    on a shared machine hits both alike."""
    device = torch.device(device) if device is not None else bench_device()
    if threads is not None:
        torch.set_num_threads(threads)
    rows = {}
    for label, (kind, constrained), plain, shape in _layers():
        pair = [_make(constrained, shape)(device), _make(plain, shape)(device)]
        times = ([], [])
        for t in pair:                                      # warm-up
            train_step(t["layer"], t["x"], t["opt"])
        for _ in range(repeats):
            for j, t in enumerate(pair):
                sync(device)
                t0 = time.perf_counter()
                train_step(t["layer"], t["x"], t["opt"])
                sync(device)
                times[j].append(time.perf_counter() - t0)
        a, p = (1e3 * statistics.median(ts) for ts in times)
        rows[f"{kind},{label}"] = (a, p, a / p)
    return rows


if __name__ == "__main__":
    dev = bench_device()
    print(f"| layer (one training step, {dev.type}, {torch.get_num_threads()} threads) | constrained ms | "
          f"plain ms | ratio (goal <= {GOAL_RATIO}) |")
    print("|---|---:|---:|---:|")
    for label, (a, p, r) in step_ratios(dev).items():
        print(f"| {label} | {a:.3f} | {p:.3f} | {r:.2f} |")
