"""Lipschitz-bounded layers and models: the proven bound holds, checked from outside.

Exact checks on small layers (the operator materialised, its spectral norm from an SVD) and, for
every model, at init and after a random weight perturbation: the ratio ``||f(x) - f(x')|| /
||x - x'||`` over random pairs and over pairs found by gradient ascent on that ratio never
exceeds ``lipschitz_bound()`` (relative 1e-6). Everything runs in float64, so rounding cannot
produce a spurious excess.
"""
import math

import pytest
import torch
from torch.nn import functional as F

from clustr_fast.models import MODELS, build_model
from clustr_fast.models.lipschitz_layers import (AOLConv2d, AOLLinear, Centering, InvertibleDownsample, MaxMin,
                                                 ScaledAvgPool2d, SLLConv2d, SLLLinear, chain_bound)
from clustr_fast.robust.lipschitz import lipschitz_bound
from robust_helpers import one_thread  # noqa: F401  (one_thread: autouse fixture)

REL = 1e-6
ASCENT_STEPS = 200


def operator_matrix(fn, in_shape):
    """The linear map ``fn`` on ``in_shape`` inputs as a dense ``[n_out, n_in]`` float64 matrix."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        return fn(basis).reshape(n, -1).T


def jacobian_norm(fn, x):
    """Spectral norm of the Jacobian of ``fn`` at one input ``x`` (no batch dim)."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v[None]).reshape(-1), x)
    return float(torch.linalg.matrix_norm(jac.reshape(jac.shape[0], -1), ord=2))


def perturb_(module, seed, scale=0.5):
    """Random weights far from the (orthogonal) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * (p.std() if p.numel() > 1 and p.std() > 0 else 1.0)
                   * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("shape", [(5, 7), (7, 5), (16, 16), (1, 9)])
def test_aol_dense_effective_matrix_has_norm_at_most_one(shape):
    torch.manual_seed(0)
    layer = AOLLinear(shape[1], shape[0]).double()
    perturb_(layer, 1, scale=3.0)
    w = layer.effective_weight().detach()
    assert float(torch.linalg.matrix_norm(w, ord=2)) <= 1 + 1e-12
    x = torch.randn(3, shape[1], dtype=torch.float64)
    assert torch.allclose(layer(x), x @ w.T + layer.bias, atol=1e-12)


@pytest.mark.parametrize("shape", [(10, 6), (6, 10)])
def test_aol_dense_starts_with_unit_singular_values(shape):
    layer = AOLLinear(shape[1], shape[0]).double()
    sv = torch.linalg.svdvals(layer.effective_weight().detach())
    assert torch.allclose(sv, torch.ones_like(sv), atol=1e-10)


@pytest.mark.parametrize("cin,cout,k,stride,padding", [
    (2, 3, 3, 1, 1), (3, 2, 3, 2, 1), (2, 4, 5, 1, 4), (3, 3, 1, 1, 0), (4, 2, 3, 1, 0), (1, 5, 3, 2, 2)])
def test_aol_conv_explicit_matrix_has_norm_at_most_one(cin, cout, k, stride, padding):
    torch.manual_seed(0)
    layer = AOLConv2d(cin, cout, k, stride=stride, padding=padding).double()
    perturb_(layer, 2, scale=3.0)
    kernel = layer.effective_weight().detach()
    mat = operator_matrix(lambda v: F.conv2d(v, kernel, None, stride, padding), (cin, 6, 5))
    norm = float(torch.linalg.matrix_norm(mat, ord=2))
    assert norm <= 1 + 1e-12
    assert norm > 0.05                                             # the scale does not just crush the kernel
    x = torch.randn(2, cin, 6, 5, dtype=torch.float64)
    out = layer(x) - layer.bias.view(1, -1, 1, 1)
    assert torch.allclose(out.reshape(2, -1), x.reshape(2, -1) @ mat.T, atol=1e-12)


def test_aol_conv_rejects_padding_beyond_the_kernel():
    with pytest.raises(ValueError, match="`padding`"):
        AOLConv2d(2, 2, 3, padding=3)


@pytest.mark.parametrize("features,inner", [(6, 4), (4, 9), (8, 8)])
def test_sll_dense_is_one_lipschitz(features, inner):
    torch.manual_seed(0)
    layer = SLLLinear(features, inner).double()
    perturb_(layer, 3, scale=2.0)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, features, generator=g, dtype=torch.float64)
    y = torch.randn(64, features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ratio = (layer(x) - layer(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert float(ratio.max()) <= 1 + 1e-12
    assert max(jacobian_norm(layer, x[i]) for i in range(8)) <= 1 + 1e-12


def test_sll_conv_is_one_lipschitz():
    torch.manual_seed(0)
    layer = SLLConv2d(3, 4, 3).double()
    perturb_(layer, 5, scale=2.0)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    assert jacobian_norm(layer, x) <= 1 + 1e-12
    with pytest.raises(ValueError, match="`kernel_size`"):
        SLLConv2d(3, kernel_size=2)


def test_activations_and_downsampling():
    x = torch.randn(4, 6, 4, 4, dtype=torch.float64)
    y = torch.randn(4, 6, 4, 4, dtype=torch.float64)
    mm = MaxMin()
    assert torch.allclose(mm(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))          # norm-preserving
    assert bool(((mm(x) - mm(y)).flatten(1).norm(dim=1) <= (x - y).flatten(1).norm(dim=1) + 1e-12).all())
    down = InvertibleDownsample(2)
    assert down(x).shape == (4, 24, 2, 2)
    assert torch.allclose((down(x) - down(y)).flatten(1).norm(dim=1), (x - y).flatten(1).norm(dim=1))
    pool = operator_matrix(ScaledAvgPool2d(2), (2, 4, 6))
    assert torch.allclose(torch.linalg.svdvals(pool), torch.ones(12, dtype=torch.float64))
    c = Centering([0.5, 0.1], scale=0.25)
    assert c.lipschitz_constant() == 4.0
    with pytest.raises(ValueError, match="`scale`"):
        Centering([0.0], scale=0.0)
    with pytest.raises(TypeError, match="Linear"):
        chain_bound([torch.nn.Linear(2, 2)])


# (name, constructor keywords, input shape): every Lipschitz model, small enough for the ascent
MODEL_CASES = [
    ("lip-mlp", dict(in_dim=2, width=32, depth=1, activation="relu"), (2,)),
    ("lip-mlp", dict(in_dim=2, width=32, depth=2, residual=True, activation="maxmin", mean=[0.5, 0.2],
                     std=[0.5, 2.0]), (2,)),
    ("lip-mlp", dict(in_dim=64, width=64, mean=[0.3], std=[0.4]), (1, 8, 8)),
    ("lip-cnn", dict(width=8, mean=[0.3], std=[0.378]), (1, 8, 8)),
    ("lip-cnn", dict(width=4, activation="relu"), (1, 8, 8)),
    ("lip-resnet", dict(width=4, blocks=(1, 1, 1), feature_dim=64), (3, 32, 32)),
]


def ascent_ratio(net, x, y, steps=ASCENT_STEPS, lr=1e-2):
    """Largest ``||f(x) - f(y)|| / ||x - y||`` seen by Adam on ``log`` of that ratio over ``x`` and ``y``
    (one ascent per row)."""
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=lr)
    best = torch.zeros(x.shape[0], dtype=x.dtype)
    for _ in range(steps):
        ratio = (net(x)[1] - net(y)[1]).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        best = torch.maximum(best, ratio.detach())
        opt.zero_grad()
        (-ratio.log().sum()).backward()
        opt.step()
    return best


def test_the_ascent_finds_the_norm_of_a_linear_map():
    """The ascent has power: on ``x -> W x`` it reaches ``||W||_2``."""
    torch.manual_seed(0)
    w = torch.randn(6, 10, dtype=torch.float64)

    class Linear(torch.nn.Module):
        def forward(self, x):
            f = x @ w.T
            return f, f

    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(4, 10, generator=g, dtype=torch.float64) for _ in range(2))
    found = float(ascent_ratio(Linear(), x, y).max())
    norm = float(torch.linalg.matrix_norm(w, ord=2))
    assert 0.98 * norm <= found <= norm * (1 + 1e-12)


@pytest.mark.parametrize("perturbed", [False, True], ids=["init", "perturbed"])
@pytest.mark.parametrize("name,kw,shape", MODEL_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(MODEL_CASES)])
def test_bound_holds_from_outside(name, kw, shape, perturbed):
    torch.manual_seed(0)
    net = build_model(name, 5, **kw).double().eval()
    if perturbed:
        perturb_(net, 7)
    bound = net.lipschitz_bound()
    std = kw.get("std")
    assert bound == pytest.approx(1.0 / min(std) if std else 1.0)
    example = torch.rand(1, *shape, dtype=torch.float64)
    assert lipschitz_bound(net, example) == bound                       # the library's bound is the proven one
    assert lipschitz_bound(net, example, output=0) == pytest.approx(net.lipschitz_bound(output=0))
    g = torch.Generator().manual_seed(11)
    x = torch.rand(32, *shape, generator=g, dtype=torch.float64)
    near = x + 1e-3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    far = torch.rand(32, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        f = net(x)[1]
        random_ratio = torch.cat([(f - net(y)[1]).norm(dim=1) / (x - y).flatten(1).norm(dim=1) for y in (near, far)])
    assert float(random_ratio.max()) <= bound * (1 + REL)
    # the ascent starts from the worst random pairs, so it can only climb from there
    pairs = 4 if name == "lip-resnet" else 8
    top = random_ratio.topk(pairs).indices
    start_x, start_y = torch.cat([x, x])[top], torch.cat([near, far])[top]
    steps = ASCENT_STEPS // 2 if name == "lip-resnet" else ASCENT_STEPS
    found = ascent_ratio(net, start_x, start_y, steps=steps)
    assert float(found.max()) <= bound * (1 + REL), float(found.max()) / bound


@pytest.mark.parametrize("name", ["lip-mlp", "lip-cnn", "lip-resnet"])
def test_models_follow_the_model_interface(name):
    torch.manual_seed(0)
    shape = {"lip-mlp": (3, 2), "lip-cnn": (3, 1, 8, 8), "lip-resnet": (2, 3, 32, 32)}[name]
    net = build_model(name, 7)
    assert name in MODELS
    logits, feats = net(torch.rand(shape))
    assert logits.shape == (shape[0], 7) and feats.shape == (shape[0], net.feature_dim)
    assert torch.allclose(logits, net.fc(feats), atol=1e-5)
    feats.sum().backward()
    assert net.fc.weight.grad is None
    assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("fc."))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    with pytest.raises(ValueError, match="`output`"):
        net.lipschitz_bound(output=2)


def test_bad_model_arguments_name_themselves():
    with pytest.raises(ValueError, match="`activation`"):
        build_model("lip-mlp", 3, activation="tanh")
    with pytest.raises(ValueError, match="`image_size`"):
        build_model("lip-cnn", 3, image_size=6)
    with pytest.raises(ValueError, match="`std`"):
        build_model("lip-cnn", 3, std=[0.0])
    with pytest.raises(ValueError, match="`feature_dim`"):
        build_model("lip-resnet", 3, feature_dim=100)
