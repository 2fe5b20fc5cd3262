"""pairwise_sqdist on every backend that runs here, against float64."""
import pytest
import torch

import clustr_fast
from clustr_fast.ops.pairwise_sqdist import pairwise_sqdist_op

from conftest import assert_close_f64, low_precision_dtypes

SHAPES = [(1, 1, 1), (7, 3, 3), (127, 65, 130), (1000, 3, 7), (33, 65, 1)]


def f64_sqdist(x, c):
    """Independent float64 oracle: explicit differences, no expansion."""
    x, c = x.double(), c.double()
    return (x[:, None, :] - c[None, :, :]).square().sum(-1)


def _inputs(n, k, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    c = (torch.randn(k, d, generator=g) + 0.5).to(device=device, dtype=dtype)
    return x, c


def _scale(x, c):
    """|error| is judged against ||x||^2 + ||c||^2 (the expansion's cancellation)."""
    return x.double().square().sum(1)[:, None] + c.double().square().sum(1)[None, :] + 1.0


@pytest.mark.parametrize("n,k,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_float64(backend, n, k, d, dtype):
    _, dev = backend
    x, c = _inputs(n, k, d, dtype, dev)
    out = clustr_fast.pairwise_sqdist(x, c)
    assert out.dtype == dtype and out.shape == (n, k)
    assert (out >= 0).all()
    assert_close_f64(out.cpu(), f64_sqdist(x.cpu(), c.cpu()), dtype=dtype, scale=_scale(x.cpu(), c.cpu()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_across_tiles_panels_and_center_blocks(backend, dtype):
    """The CPU kernel's layout: 203 rows (two blocks of 96, then a tile of 6 and a remainder of 5),
    every remainder tile, 401 centers (a partial last panel) of d = 130 (3 center blocks); 64 rows
    equal to centers, whose distances cancel to about 0 and must be clamped."""
    name, dev = backend
    if name == "triton" and dev.type == "cpu":
        pytest.skip("the interpreter is slow")
    x, c = _inputs(203, 401, 130, dtype, dev, seed=9)
    x[100:164] = c[200:264] * 3.0
    c[200:264] *= 3.0  # rows equal to centers in both vectors of 4 panels: the expansion cancels
    for rows in (203, 1, 2, 3, 4, 5, 6):
        out = clustr_fast.pairwise_sqdist(x[:rows], c)
        xr = x[:rows].cpu()
        assert (out >= 0).all(), "a cancelled distance was not clamped at 0"
        assert_close_f64(out.cpu(), f64_sqdist(xr, c.cpu()), dtype=dtype, scale=_scale(xr, c.cpu()))


@pytest.mark.parametrize("n,k,d", [(7, 3, 3), (127, 65, 130)])
def test_low_precision_inputs(backend, n, k, d):
    name, dev = backend
    for dtype in low_precision_dtypes(name, dev):
        x, c = _inputs(n, k, d, dtype, dev, seed=1)
        out = clustr_fast.pairwise_sqdist(x, c)
        assert out.dtype == torch.float32
        ref = f64_sqdist(x.cpu(), c.cpu())
        xl, cl = x.cpu(), c.cpu()
        plain = (xl[:, None, :] - cl[None, :, :]).square().sum(-1)  # plain PyTorch in that dtype
        assert_close_f64(out.cpu(), ref, dtype=dtype, plain=plain, scale=_scale(xl, cl))


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (7, 3, 3), (127, 65, 130)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_matches_float64(backend, n, k, d, dtype):
    _, dev = backend
    x, c = _inputs(n, k, d, dtype, dev, seed=2)
    x.requires_grad_(True)
    c.requires_grad_(True)
    g = torch.randn(n, k, generator=torch.Generator().manual_seed(3), dtype=dtype).to(dev)
    clustr_fast.pairwise_sqdist(x, c).backward(g)
    x64 = x.detach().cpu().double().requires_grad_(True)
    c64 = c.detach().cpu().double().requires_grad_(True)
    f64_sqdist(x64, c64).backward(g.cpu().double())
    for got, want in ((x.grad, x64.grad), (c.grad, c64.grad)):
        assert got.dtype == dtype
        scale = want.abs().max().clamp_min(1.0)
        assert_close_f64(got.cpu(), want, dtype=dtype, scale=scale)


def test_half_gradients_have_input_dtype(backend):
    _, dev = backend
    x, c = _inputs(9, 4, 5, torch.float16, dev, seed=4)
    x.requires_grad_(True)
    c.requires_grad_(True)
    clustr_fast.pairwise_sqdist(x, c).sum().backward()
    assert x.grad.dtype == torch.float16 and c.grad.dtype == torch.float16
    x64, c64 = x.detach().cpu().double().requires_grad_(True), c.detach().cpu().double().requires_grad_(True)
    f64_sqdist(x64, c64).sum().backward()
    assert torch.allclose(x.grad.cpu().double(), x64.grad, rtol=1e-2, atol=1e-2)


def test_non_contiguous_inputs(backend):
    _, dev = backend
    base_x, base_c = _inputs(40, 30, 24, torch.float32, dev, seed=5)
    x = base_x[::2, ::3]  # strided rows and columns
    c = base_c.t().contiguous().t()[::3, ::3]  # column-major storage
    assert not x.is_contiguous() and not c.is_contiguous()
    out = clustr_fast.pairwise_sqdist(x, c)
    assert_close_f64(out.cpu(), f64_sqdist(x.cpu(), c.cpu()), dtype=torch.float32, scale=_scale(x.cpu(), c.cpu()))


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_lower_precision_modes_are_close(backend, precision):
    _, dev = backend
    x, c = _inputs(65, 33, 64, torch.float32, dev, seed=6)
    out = clustr_fast.pairwise_sqdist(x, c, precision=precision)
    ref = f64_sqdist(x.cpu(), c.cpu())
    err = ((out.cpu().double() - ref).abs() / _scale(x.cpu(), c.cpu())).max().item()
    assert err < 2e-2  # bf16 products carry 8 bits of mantissa


def test_bad_inputs_name_the_argument():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="x"):
        clustr_fast.pairwise_sqdist(torch.randn(4), x)
    with pytest.raises(ValueError, match="c"):
        clustr_fast.pairwise_sqdist(x, torch.randn(4, 5))
    with pytest.raises(TypeError, match="c"):
        clustr_fast.pairwise_sqdist(x, torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x"):
        clustr_fast.pairwise_sqdist(torch.ones(4, 3, dtype=torch.int64), x)
    with pytest.raises(ValueError, match="precision"):
        clustr_fast.pairwise_sqdist(x, x, precision="fast")


def test_opcheck_forward_and_backward(backend):
    _, dev = backend
    x = torch.randn(9, 5, device=dev, requires_grad=True)
    c = torch.randn(4, 5, device=dev, requires_grad=True)
    torch.library.opcheck(pairwise_sqdist_op, (x, c, 0))
    g = torch.randn(9, 4, device=dev)
    torch.library.opcheck(torch.ops.clustr_fast.pairwise_sqdist_backward.default, (g, x.detach(), c.detach(), 0))


def test_gradcheck_float64(backend):
    _, dev = backend
    x, c = _inputs(5, 4, 3, torch.float64, dev, seed=7)
    x.requires_grad_(True)
    c.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: clustr_fast.pairwise_sqdist(a, b), (x, c))


def test_torch_compile_fullgraph_cpu():
    x, c = _inputs(17, 5, 8, torch.float32, "cpu", seed=8)

    @torch.compile(fullgraph=True, backend="eager")
    def f(a, b):
        return clustr_fast.pairwise_sqdist(a, b).sqrt().sum()

    assert torch.allclose(f(x, c), clustr_fast.pairwise_sqdist(x, c).sqrt().sum())


def test_explicit_unavailable_backend_raises():
    x = torch.randn(3, 2)
    if "cuda" not in clustr_fast.backends():
        with pytest.raises(RuntimeError, match="cuda"):
            with clustr_fast.use_backend("cuda"):
                clustr_fast.pairwise_sqdist(x, x)
    with pytest.raises(ValueError, match="backend"):
        with clustr_fast.use_backend("fastest"):
            pass


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["triton", "cuda"])
@pytest.mark.parametrize("precision,tol", [("highest", 1e-5), ("high", 2e-3), ("medium", 2e-2)])
def test_gpu_large_forward_backward(name, precision, tol):
    """Shapes that take the tiled and split-K paths on the GPU."""
    if name not in clustr_fast.backends():
        pytest.skip(f"{name} not available")
    x, c = _inputs(20_011, 65, 130, torch.float32, "cuda", seed=9)
    x.requires_grad_(True)
    c.requires_grad_(True)
    g = torch.randn(20_011, 65, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with clustr_fast.use_backend(name):
        out = clustr_fast.pairwise_sqdist(x, c, precision=precision)
        gx, gc = torch.autograd.grad(out, (x, c), g)
    x64, c64 = x.detach().double().requires_grad_(True), c.detach().double().requires_grad_(True)
    ref = f64_sqdist(x64, c64)
    rgx, rgc = torch.autograd.grad(ref, (x64, c64), g.double())
    err = ((out.double() - ref).abs() / _scale(x64.detach(), c64.detach())).max().item()
    assert err < tol, f"forward error {err:.2e} ({precision})"
    for got, want in ((gx, rgx), (gc, rgc)):
        gerr = ((got.double() - want).abs().max() / want.abs().max()).item()
        assert gerr < max(tol, 1e-5) * 10, f"gradient error {gerr:.2e} ({precision})"
