"""Lipschitz upper bounds: exact on linear maps, never below the empirical constant."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from clustr_fast.models import build_model
from clustr_fast.robust import lipschitz
from clustr_fast.robust.lipschitz import conv2d_norm, lipschitz_bound, operator_norm
from robust_helpers import one_thread  # noqa: F401  (one_thread: autouse fixture)


class Pair(nn.Module):
    """Returns ``(logits, features)`` like the library's models."""

    def __init__(self, body, fc):
        super().__init__()
        self.body, self.fc = body, fc

    def forward(self, x):
        f = self.body(x)
        return self.fc(f), f


def conv_matrix(conv, in_shape):
    """The conv (no bias) as a dense matrix on flattened inputs."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    w = conv.weight.detach().double()
    out = F.conv2d(basis, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.reshape(n, -1)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 0)])
def test_conv_norm_matches_the_dense_operator(stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding)
    exact = float(torch.linalg.matrix_norm(conv_matrix(conv, (3, 6, 6)), ord=2))
    assert conv2d_norm(conv, (3, 6, 6)) == pytest.approx(exact, rel=1e-9)


def _dense_norm(fn, in_shape):
    n = math.prod(in_shape)
    with torch.no_grad():
        mat = fn(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)).reshape(n, -1)
    return float(torch.linalg.eigvalsh(mat.T @ mat if mat.shape[1] < n else mat @ mat.T)[-1].sqrt())


def test_conv_bounds_are_never_below_the_dense_norm():
    """The circulant (polyphase) bound and the kernel bound, used past EXACT_LIMIT, against the SVD
    of the materialised operator on 150 random convolutions: strides, dilations, paddings, groups,
    rectangular kernels and inputs, nonnegative kernels (which come closest to the bounds)."""
    g = torch.Generator().manual_seed(5)

    def draw(lo, hi):
        return int(torch.randint(lo, hi, (), generator=g))

    checked = 0
    while checked < 150:
        groups = (1, 2, 3)[checked % 3]
        cin, cout = groups * draw(1, 3), groups * draw(1, 3)
        kh, kw, sh, sw, dh, dw = draw(1, 5), draw(1, 5), draw(1, 4), draw(1, 4), draw(1, 3), draw(1, 3)
        ph, pw, H, W = draw(0, 3), draw(0, 3), draw(4, 11), draw(4, 11)
        if (kh - 1) * dh + 1 > H + 2 * ph or (kw - 1) * dw + 1 > W + 2 * pw:
            continue
        w = torch.randn(cout, cin // groups, kh, kw, dtype=torch.float64, generator=g)
        if checked % 4 == 0:
            w = w.abs()
        shape = (cin, H, W)
        args = ((sh, sw), (ph, pw), (dh, dw), groups)
        exact = _dense_norm(lambda x: F.conv2d(x, w, None, *args), shape)
        circulant = lipschitz.conv2d_circulant_bound(w, shape, *args)
        kernel = lipschitz.conv_kernel_bound(w, (sh, sw), (dh, dw), groups)
        assert circulant >= exact * (1 - 1e-12), (shape, w.shape, args)
        assert kernel >= exact * (1 - 1e-12), (shape, w.shape, args)
        checked += 1


def test_circulant_bound_in_chunks_of_frequencies(monkeypatch):
    """The DFT blocks go through eigvalsh in chunks (memory on large inputs): any chunk size gives
    the same bound, down to one block per chunk."""
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    args = ((4, 17, 13), 2, 1, 1, 2)
    whole = lipschitz.conv2d_circulant_bound(w, *args)
    for chunk in (1, 7, 100):
        monkeypatch.setattr(lipschitz, "CIRCULANT_CHUNK", chunk)
        assert lipschitz.conv2d_circulant_bound(w, *args) == pytest.approx(whole, rel=1e-13)


@pytest.mark.parametrize("k,stride,dilation,padding,groups", [
    (3, 1, 1, 1, 1), (3, 2, 2, 2, 1), (5, 3, 1, 2, 2), (2, 2, 1, 0, 4), (1, 1, 1, 0, 1), (3, 1, 2, "same", 1),
])
def test_conv_norm_past_the_exact_limit_is_a_tight_bound(monkeypatch, k, stride, dilation, padding, groups):
    """Past EXACT_LIMIT conv2d_norm is a proven bound within 4% of the true norm on a 20 x 18 input
    (the kernel bound alone is up to 3x above it); 1 x 1 and non-overlapping kernels are exact."""
    torch.manual_seed(6)
    conv = nn.Conv2d(4, 8, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=False)
    shape = (4, 20, 18)
    w = conv.weight.detach().double()
    exact = _dense_norm(lambda x: F.conv2d(x, w, None, stride, padding, dilation, groups), shape)
    monkeypatch.setattr(lipschitz, "EXACT_LIMIT", 10)
    bound = conv2d_norm(conv, shape)
    assert exact * (1 - 1e-12) <= bound <= exact * 1.04
    if k == stride:
        assert bound == pytest.approx(exact, rel=1e-12)


def test_power_iteration_estimate_is_close_from_below():
    """operator_norm past EXACT_LIMIT is an estimate (power iteration + POWER_SLACK), not a bound;
    the circulant bound sits above the raw iteration."""
    torch.manual_seed(1)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    shape = (2, 24, 24)
    est = operator_norm(lambda x: F.conv2d(x, w, None, 2, 1), shape)
    exact = _dense_norm(lambda x: F.conv2d(x, w, None, 2, 1), shape)
    assert exact * (1 - 1e-4) <= est <= exact * (1 + 2 * lipschitz.POWER_SLACK)
    assert lipschitz.conv2d_circulant_bound(w, shape, 2, 1) >= est / (1 + lipschitz.POWER_SLACK)


@pytest.mark.parametrize("pool", [
    dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=(2, 3), stride=(1, 2)),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=2, divisor_override=3), dict(output_size=(3, 4)), dict(output_size=1),
])
def test_average_pool_bound(monkeypatch, pool):
    """sqrt(||A||_1 ||A||_inf) past EXACT_LIMIT: never below the dense norm, and equal to it for
    pools whose windows do not overlap (a mean over k inputs: 1/sqrt(k))."""
    fn = ((lambda x: F.adaptive_avg_pool2d(x, **pool)) if "output_size" in pool
          else (lambda x: F.avg_pool2d(x, **pool)))
    shape = (2, 9, 11)
    exact = _dense_norm(fn, shape)
    monkeypatch.setattr(lipschitz, "EXACT_LIMIT", 10)
    bound = lipschitz.pool_norm(fn, shape)
    assert bound >= exact * (1 - 1e-12)
    if pool in (dict(kernel_size=2), dict(kernel_size=2, divisor_override=3), dict(output_size=1)):
        assert bound == pytest.approx(exact, rel=1e-12)


def test_functional_conv_and_pool_past_the_exact_limit(monkeypatch):
    """F.conv2d with weights held by the module (string padding) and F.avg_pool2d in a traced graph
    take the same proven bounds as the modules."""
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 2, 3, 3))

        def forward(self, x):
            f = F.avg_pool2d(F.conv2d(x, self.w, None, 1, "same"), 2).flatten(1)
            return f, f

    torch.manual_seed(7)
    net = Functional().eval()
    shape = (2, 12, 10)
    w = net.w.detach().double()
    conv = _dense_norm(lambda x: F.conv2d(x, w, None, 1, "same"), shape)
    pool = _dense_norm(lambda x: F.avg_pool2d(x, 2), (3, 12, 10))
    monkeypatch.setattr(lipschitz, "EXACT_LIMIT", 10)
    bound = lipschitz_bound(net, torch.zeros(1, *shape), output=1)
    assert conv * pool * (1 - 1e-12) <= bound <= conv * pool * 1.05


def test_linear_chain_is_the_product_of_spectral_norms():
    torch.manual_seed(2)
    body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU())
    net = Pair(body, nn.Linear(5, 3)).eval()
    norms = [float(torch.linalg.matrix_norm(m.weight.detach().double(), ord=2)) for m in body if isinstance(m, nn.Linear)]
    assert lipschitz_bound(net, torch.zeros(1, 4), output=1) == pytest.approx(norms[0] * norms[1], rel=1e-9)
    fc = float(torch.linalg.matrix_norm(net.fc.weight.detach().double(), ord=2))
    assert lipschitz_bound(net, torch.zeros(1, 4), output=0) == pytest.approx(norms[0] * norms[1] * fc, rel=1e-9)


def test_batchnorm_residual_and_normalisation():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)) + x)

    torch.manual_seed(3)
    block = Block()
    block.bn.running_var.copy_(torch.tensor([0.25, 4.0]))
    block.bn.weight.data.copy_(torch.tensor([1.0, -3.0]))
    block.eval()
    conv = conv2d_norm(block.conv, (2, 5, 5))
    bn = max(1 / math.sqrt(0.25 + 1e-5), 3 / math.sqrt(4.0 + 1e-5))
    net = Pair(nn.Sequential(block, nn.Flatten()), nn.Linear(50, 2)).eval()
    assert lipschitz_bound(net, torch.zeros(1, 2, 5, 5)) == pytest.approx(conv * bn + 1.0, rel=1e-9)


@pytest.mark.parametrize("name,shape", [("mlp", (2,)), ("cnn", (1, 8, 8))])
def test_library_models_bound_exceeds_empirical_constant(name, shape):
    torch.manual_seed(4)
    net = build_model(name, 10).eval()
    for output in (0, 1):
        bound = lipschitz_bound(net, torch.rand(1, *shape), output=output)
        x = torch.rand(256, *shape, dtype=torch.float64)
        net64 = net.double()
        # empirical: local gradient norms along random directions and finite differences
        d = 1e-4 * torch.randn_like(x)
        with torch.no_grad():
            ratio = (net64(x + d)[output] - net64(x)[output]).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)
        assert float(ratio.max()) <= bound
        net.float()


def test_operator_norm_of_average_pool():
    # 2x2 average pool, stride 2: each output averages 4 disjoint inputs -> norm 1/2
    assert operator_norm(lambda x: F.avg_pool2d(x, 2), (1, 4, 4)) == pytest.approx(0.5, rel=1e-9)


def test_unknown_operations_and_training_mode_raise():
    class Odd(nn.Module):
        def forward(self, x):
            f = x * x
            return f, f

    with pytest.raises(ValueError, match="product"):
        lipschitz_bound(Odd().eval(), torch.zeros(1, 3))
    net = Pair(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="eval mode"):
        lipschitz_bound(net, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="Softmax"):
        lipschitz_bound(Pair(nn.Softmax(1), nn.Linear(2, 2)).eval(), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="`net`"):
        lipschitz_bound("net", torch.zeros(1, 2))


def _windows_per_element(size, kernel, stride, dilation, padding=0):
    """Most windows of a 1-D pooling/convolution geometry that one input element lies in."""
    count = [0] * size
    start = -padding
    while start + (kernel - 1) * dilation < size + padding:
        for t in range(kernel):
            i = start + t * dilation
            if 0 <= i < size:
                count[i] += 1
        start += stride
    return max(count)


def test_leaf_constants_where_sign_dilation_or_the_smallest_scale_matters():
    """Cases where a formula off by a sign, an ignored dilation or the wrong extreme would
    understate the constant (and so overstate certified radii)."""
    from clustr_fast.models.normalize import Normalize
    bn = nn.BatchNorm1d(2)
    bn.running_var.copy_(torch.tensor([0.25, 1.0]))
    bn.weight.data.copy_(torch.tensor([1.0, -6.0]))  # |scales| 2 and 6: the negative one is the largest
    bn.eval()
    assert lipschitz.module_constant(bn, (2,)) == pytest.approx(6.0 / math.sqrt(1.0 + bn.eps), rel=1e-12)
    elu = nn.ELU(alpha=2.0)  # slope alpha e^x -> alpha as x -> 0-
    x = torch.tensor([-1e-7, -2e-7], dtype=torch.float64)
    slope = float((elu(x[0]) - elu(x[1])) / (x[0] - x[1]))
    assert lipschitz.module_constant(elu, (1,)) == 2.0 and slope <= 2.0 and slope > 1.99
    norm = Normalize([0.0, 0.0], [0.5, 2.0])  # x / 0.5 on the first channel
    assert lipschitz.module_constant(norm, (2, 3, 3)) == pytest.approx(2.0)
    for k, s, d in ((2, 2, 2), (3, 2, 2), (2, 1, 3), (3, 3, 1)):
        pool = nn.MaxPool2d(k, stride=s, dilation=d)
        m = _windows_per_element(24, k, s, d) ** 2
        assert lipschitz.maxpool_constant(pool) >= math.sqrt(m) - 1e-12, (k, s, d)


@pytest.mark.parametrize("dilation,stride", [(2, 2), (1, 1), (2, 1)])
def test_conv_kernel_bound_is_above_the_dense_norm_for_dilated_convolutions(dilation, stride):
    """The kernel bound (used past EXACT_LIMIT) on an all-ones kernel, which nearly attains it."""
    conv = nn.Conv2d(1, 1, 3, stride=stride, dilation=dilation, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    exact = float(torch.linalg.matrix_norm(conv_matrix(conv, (1, 14, 14)), ord=2))
    assert lipschitz.conv_kernel_bound(conv.weight, conv.stride, conv.dilation, conv.groups) >= exact * (1 - 1e-12)
