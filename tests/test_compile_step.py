"""A whole Magnet training step (embed, batch Magnet loss, backward, Adam) under torch.compile.

The step has no graph break (``fullgraph=True`` and ``torch._dynamo.explain``) and gives the
eager step's parameters. Backward inside the compiled function is ``torch.autograd.grad``,
which dynamo traces with ``trace_autograd_ops``; Adam is the functional ``torch.optim.adam.adam``
(``Optimizer.step`` breaks the graph on purpose, around its no-grad region).
"""
import copy

import pytest
import torch
from torch.optim.adam import adam

import clustr_fast

pytestmark = pytest.mark.skipif("cpu" not in clustr_fast.backends(), reason="needs the C++ extension")


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    # no bias on the last layer: the Magnet loss does not change under a shift of every feature, so
    # that bias's gradient is rounding noise, which Adam scales up to steps of size lr
    embed = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False))
    with torch.no_grad():
        for p in embed.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(30, 12, generator=g)
    ids = torch.arange(30) % 6
    classes = torch.tensor([0, 0, 1, 1, 2, 2])
    return embed, x, ids, classes


def _make_step(embed, ids, classes, variance=None):
    params = list(embed.parameters())
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), dtype=torch.float32) for _ in params]

    def step(x):
        loss = clustr_fast.magnet_loss_batch(embed(x), ids, classes, alpha=1.0, variance=variance)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            adam(params, list(grads), exp_avg, exp_avg_sq, [], steps, foreach=False, capturable=False,
                 differentiable=False, fused=None, grad_scale=None, found_inf=None, has_complex=False,
                 amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-2, weight_decay=0.0, eps=1e-8, maximize=False)
        return loss.detach()

    return step


@pytest.mark.parametrize("variance", [None, 0.8])
def test_magnet_step_has_no_graph_break(variance):
    embed, x, ids, classes = _problem()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(_make_step(copy.deepcopy(embed), ids, classes, variance))(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    code = explanation.graphs[0].code  # no host sync in the step: no value read back
    assert ".item()" not in code and "_local_scalar_dense" not in code and ".tolist()" not in code, code
    assert "clustr_fast.magnet_loss_batch" in code, code  # the fused op, one call


@pytest.mark.parametrize("backend, mode", [("aot_eager", None), ("inductor", None), ("inductor", "reduce-overhead")])
def test_compiled_magnet_step_matches_eager(backend, mode):
    """fullgraph=True: AOT autograd traces the op's fake, its autograd (csrc/autograd.cpp) and Adam.
    mode="reduce-overhead" asks for CUDA graphs; on CPU tensors Inductor runs the graph without them."""
    embed, x, ids, classes = _problem(seed=1)
    eager_model = copy.deepcopy(embed)
    eager_step = _make_step(eager_model, ids, classes)
    compiled_model = copy.deepcopy(embed)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch._dynamo.reset()
        compiled_step = torch.compile(_make_step(compiled_model, ids, classes), fullgraph=True, backend=backend,
                                      mode=mode)
        for _ in range(3):
            want = eager_step(x)
            got = compiled_step(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert any((p - q).abs().max() > 0 for p, q in zip(compiled_model.parameters(), embed.parameters()))
