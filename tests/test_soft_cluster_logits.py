"""soft_cluster_logits / soft_cluster_predict on every backend that runs here, against float64."""
import math

import pytest
import torch

import clustr_fast
from clustr_fast import reference as R
from clustr_fast.nn import SoftClusterHead
from clustr_fast.ops.soft_cluster_logits import soft_cluster_logits_op

from conftest import assert_close_f64, low_precision_dtypes

F64 = torch.float64
NINF = float("-inf")

# (n, c, d, per_class K, top_d); top_d None = all centers
CASES = [
    (1, 1, 1, 1, None),
    (7, 3, 3, 1, 1),
    (7, 3, 3, 2, 3),
    (127, 65, 130, 1, 3),
    (127, 65, 130, 2, 1),
    (33, 65, 3, 2, None),
    (1000, 65, 3, 1, 3),
    (1000, 3, 1, 2, 1),
]


def _inputs(n, c, d, k, dtype, device, seed=0):
    """Random features and centers; center j has class j // k; one extra class has no center."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    mu = (1.5 * torch.randn(c, d, generator=g)).to(device=device, dtype=dtype)
    cls = (torch.arange(c) // k).to(device)
    num_classes = (c + k - 1) // k + 1
    variance = 0.25 * d + 0.5
    return f, mu, cls, num_classes, variance


def oracle(f, mu, cls, num_classes, variance, top_d):
    """float64 reference on the same (rounded) inputs."""
    return R.soft_cluster_logits(f.detach().cpu().double(), mu.detach().cpu().double(), cls.cpu(), num_classes,
                                 variance=variance, top_d=top_d)


def _check_values(out, ref, dtype, plain=None, scale=None):
    assert out.shape == ref.shape
    assert torch.equal(torch.isinf(out.cpu()), torch.isinf(ref)), "absent classes differ"
    fin = torch.isfinite(ref)
    if scale is not None:
        scale = scale.expand_as(ref)[fin]
    assert_close_f64(out.cpu()[fin], ref[fin], dtype=dtype, plain=None if plain is None else plain[fin],
                     scale=scale)


@pytest.mark.parametrize("n,c,d,k,top_d", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_float64(backend, n, c, d, k, top_d, dtype):
    _, dev = backend
    f, mu, cls, nc, var = _inputs(n, c, d, k, dtype, dev, seed=n + c + d)
    out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=top_d)
    assert out.dtype == dtype and out.device.type == dev.type
    ref = oracle(f, mu, cls, nc, var, top_d)
    assert torch.isinf(ref[:, -1]).all()  # the class without centers
    _check_values(out, ref, dtype)


@pytest.mark.parametrize("n,c,d,k,top_d", [(7, 3, 3, 1, 1), (127, 65, 130, 2, 3), (33, 65, 3, 1, None),
                                           (1000, 3, 1, 1, 3), (1, 1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_matches_float64(backend, n, c, d, k, top_d, dtype):
    _, dev = backend
    f, mu, cls, nc, var = _inputs(n, c, d, k, dtype, dev, seed=7 + n)
    f.requires_grad_(True)
    mu.requires_grad_(True)
    out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=top_d)
    # upstream gradient on every entry, -inf entries included (they must be ignored)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=dtype).to(dev)
    gf, gm = torch.autograd.grad(out, (f, mu), gout)
    f64 = f.detach().cpu().double().requires_grad_(True)
    m64 = mu.detach().cpu().double().requires_grad_(True)
    ref = R.soft_cluster_logits(f64, m64, cls.cpu(), nc, variance=var, top_d=top_d)
    wf, wm = torch.autograd.grad(ref, (f64, m64), gout.cpu().double())
    for got, want in ((gf, wf), (gm, wm)):
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert_close_f64(got.cpu(), want, dtype=dtype, scale=want.abs().max().clamp_min(1.0))


def _mixed_pairs():
    """(forward backend, backward backend) pairs that run here, the two names different."""
    here = clustr_fast.backends()
    dev = "cuda" if "cuda" in here else "cpu"
    names = [b for b in here if b != ("cpu" if dev == "cuda" else "cuda")]
    return dev, [(a, b) for a in names for b in names if a != b]


@pytest.mark.parametrize("pair", _mixed_pairs()[1], ids=lambda p: f"{p[0]}-then-{p[1]}")
def test_backward_on_another_backend_matches_float64(pair):
    """`auto` may run the forward on one backend and the backward on another (on a GPU:
    Triton forward, CUDA backward): every backward takes every forward's (out, idx)."""
    dev = _mixed_pairs()[0]
    fwd, bwd = pair
    f, mu, cls, nc, var = _inputs(127, 65, 130, 2, torch.float32, dev, seed=91)
    f.requires_grad_(True)
    mu.requires_grad_(True)
    with clustr_fast.use_backend(fwd):
        out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=5)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(f.device)
    with clustr_fast.use_backend(bwd):
        gf, gm = torch.autograd.grad(out, (f, mu), gout)
    ref = _check_grads_f64(f, mu, cls, nc, var, 5, gout, (gf, gm))
    _check_values(out.detach(), ref, torch.float32)


def test_auto_picks_each_pass_on_its_own(monkeypatch):
    """The backward has its own entry in the backend table, so it can differ from the forward's."""
    from clustr_fast import _backend
    cpu = "cpu" if "cpu" in clustr_fast.backends() else "reference"
    assert _backend.chosen("soft_cluster_logits_backward", "cpu") == cpu
    monkeypatch.setattr(_backend, "_can_run", lambda *args: True)  # as on a machine with both GPU backends
    assert _backend.resolve("soft_cluster_logits", "cuda", "auto", False) == "triton"
    assert _backend.resolve("soft_cluster_logits_backward", "cuda", "auto", False) == "cuda"
    assert _backend.resolve("soft_cluster_logits_backward", "cpu", "auto", False) == "cpu"


def _triton_leaves(backend, n, c, d, k, seed):
    """For tests of the Triton launcher's switches (others skip): (the kernel module, leaf
    feats, leaf centers, classes, num_classes, variance), float32."""
    name, dev = backend
    if name != "triton":
        pytest.skip("Triton launcher switch")
    from clustr_fast.kernels import soft_cluster_logits as K
    f, mu, cls, nc, var = _inputs(n, c, d, k, torch.float32, dev, seed=seed)
    return K, f.requires_grad_(True), mu.requires_grad_(True), cls, nc, var


def _check_grads_f64(f, mu, cls, nc, var, top_d, gout, grads):
    """(grad_feats, grad_centers) against the float64 reference's for the upstream gradient
    ``gout``; returns the reference's output."""
    f64 = f.detach().cpu().double().requires_grad_(True)
    m64 = mu.detach().cpu().double().requires_grad_(True)
    ref = R.soft_cluster_logits(f64, m64, cls.cpu(), nc, variance=var, top_d=top_d)
    wf, wm = torch.autograd.grad(ref, (f64, m64), gout.cpu().double())
    for got, want in zip(grads, (wf, wm)):
        assert_close_f64(got.cpu(), want, dtype=torch.float32, scale=want.abs().max().clamp_min(1.0))
    return ref.detach()


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def test_deterministic_mode_passes_over_the_atomic_cuda_backward(monkeypatch, deterministic):
    """Under torch.use_deterministic_algorithms(True), auto does not pick a backward with float
    atomics on CUDA tensors; named, it is registered (its kernel raises: the GPU test below)."""
    from clustr_fast import _backend
    monkeypatch.setattr(_backend, "_can_run", lambda *args: True)  # as on a machine with both GPU backends
    name = "soft_cluster_logits_backward"
    assert _backend.resolve(name, "cuda", "auto", True) == "triton"
    assert _backend.resolve(name, "cuda", "auto", False) == "cuda"
    assert _backend.resolve("soft_cluster_logits", "cuda", "auto", True) == "triton"
    assert _backend.resolve(name, "cuda", "cuda", True) == "cuda"
    assert _backend.resolve("soft_cluster_logits", "cuda", "cuda", True) == "cuda"  # the forward has no atomics


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in clustr_fast.backends(), reason="needs the CUDA backend")
def test_named_atomic_cuda_backward_raises_in_deterministic_mode(deterministic):
    """The CUDA backward alerts like PyTorch's own nondeterministic ops: raises, or warns with warn_only."""
    f, mu, cls, nc, var = _inputs(33, 9, 16, 3, torch.float32, torch.device("cuda"), seed=5)
    f.requires_grad_(True)
    with clustr_fast.use_backend("cuda"):
        out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=3)
        with pytest.raises(RuntimeError, match="deterministic"):
            torch.autograd.grad(out.sum(), f)
        torch.use_deterministic_algorithms(True, warn_only=True)
        out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=3)
        with pytest.warns(UserWarning, match="deterministic"):
            torch.autograd.grad(out.sum(), f)
    torch.use_deterministic_algorithms(True)
    with clustr_fast.use_backend("auto"):  # auto takes the Triton backward, without atomics
        out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=3)
        torch.autograd.grad(out.sum(), f)


def test_triton_backward_is_deterministic_in_deterministic_mode(backend, deterministic):
    """The Triton backward takes the dense center gradient under deterministic mode, whatever C / D."""
    K, f, mu, cls, nc, var = _triton_leaves(backend, 203, 65, 19, 1, seed=46)
    assert K.dense_center_grad(10_000, 1, f.device)  # far above BWD_DENSE_MAX_RATIO
    out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=2)  # C / D = 32.5
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(6)).to(f.device)
    runs = [torch.autograd.grad(out, (f, mu), gout, retain_graph=True) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    _check_grads_f64(f, mu, cls, nc, var, 2, gout, runs[0])


def test_triton_recompute_matches_float64(backend):
    """The forward's exact recompute of the selected distances, which "highest" skips on Triton
    and "medium" runs: values and gradients against float64."""
    K, f, mu, cls, nc, var = _triton_leaves(backend, 127, 65, 130, 2, seed=44)
    assert K.recompute_selected(False, 2, torch.float32) and not K.recompute_selected(False, 0, torch.float32)
    out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=5, precision="medium")
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(f.device)
    gf, gm = torch.autograd.grad(out, (f, mu), gout)
    ref = _check_grads_f64(f, mu, cls, nc, var, 5, gout, (gf, gm))
    _check_values(out.detach(), ref, torch.float32)


@pytest.mark.parametrize("path", ["atomic", "dense", "dense-chunked"])
def test_triton_center_gradient_paths_match_float64(backend, path):
    """The Triton backward's two ways to grad_mu: atomic adds in the kernel, or dense products
    over row chunks of the scattered coefficients (BWD_DENSE_MAX_RATIO, BWD_DENSE_CHUNK)."""
    K, f, mu, cls, nc, var = _triton_leaves(backend, 203, 37, 19, 2, seed=45)
    saved = K.BWD_DENSE_MAX_RATIO, K.BWD_DENSE_CHUNK
    K.BWD_DENSE_MAX_RATIO = 0 if path == "atomic" else 1000
    if path == "dense-chunked":
        K.BWD_DENSE_CHUNK = 37 * 50  # 50 rows per chunk: 5 chunks, the last one short
    try:
        assert K.dense_center_grad(37, 4, f.device) == (path != "atomic")
        out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=4)
        gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(f.device)
        gf, gm = torch.autograd.grad(out, (f, mu), gout)
    finally:
        K.BWD_DENSE_MAX_RATIO, K.BWD_DENSE_CHUNK = saved
    assert gm.abs().max() > 0  # centers selected somewhere carry gradient
    _check_grads_f64(f, mu, cls, nc, var, 4, gout, (gf, gm))


def _plain_half(f, mu, cls, nc, var, top_d):
    """The same classifier computed in the inputs' own (half) dtype with plain PyTorch."""
    d = (f[:, None, :] - mu[None, :, :]).square().sum(-1)
    idx = torch.sort(d.float(), dim=1, stable=True).indices[:, :top_d]
    z = (d * (-0.5 / var)).gather(1, idx)
    c = cls[idx]
    out = torch.full((f.shape[0], nc), NINF, dtype=f.dtype)
    for k in range(nc):
        zk = z.masked_fill(c != k, NINF)
        out[:, k] = torch.logsumexp(zk, 1)
    return torch.log_softmax(out, 1)


@pytest.mark.parametrize("n,c,d,k,top_d", [(7, 3, 3, 1, 2), (127, 65, 130, 2, 3)])
def test_low_precision_inputs(backend, n, c, d, k, top_d):
    name, dev = backend
    for dtype in low_precision_dtypes(name, dev):
        f, mu, cls, nc, var = _inputs(n, c, d, k, dtype, dev, seed=11)
        out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=top_d)
        assert out.dtype == torch.float32
        ref = oracle(f, mu, cls, nc, var, top_d)
        plain = _plain_half(f.cpu(), mu.cpu(), cls.cpu(), nc, var, top_d)
        _check_values(out, ref, dtype, plain=plain)
        f.requires_grad_(True)
        gf, = torch.autograd.grad(clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=top_d)
                                  .masked_fill(torch.isinf(out), 0).sum(), f)
        assert gf.dtype == dtype and torch.isfinite(gf).all()


def test_absent_class_is_minus_inf_with_zero_gradient(backend):
    _, dev = backend
    g = torch.Generator().manual_seed(3)
    f = torch.randn(9, 4, generator=g, dtype=F64).to(dev).requires_grad_(True)
    mu = torch.randn(12, 4, generator=g, dtype=F64).to(dev).requires_grad_(True)
    cls = (torch.arange(12) % 4).to(dev)
    out = clustr_fast.soft_cluster_logits(f, mu, cls, 6, variance=1.5, top_d=2)
    absent = torch.isinf(out)
    assert absent[:, 4:].all() and absent[:, :4].any() and (out[absent] < 0).all()
    gout = torch.randn(out.shape, generator=g, dtype=F64).to(dev)
    gf, gm = torch.autograd.grad(out, (f, mu), gout)
    assert torch.isfinite(gf).all() and torch.isfinite(gm).all()
    only_inf = torch.autograd.grad(clustr_fast.soft_cluster_logits(f, mu, cls, 6, variance=1.5, top_d=2),
                                   (f, mu), gout.masked_fill(~absent, 0.0))
    assert all((t == 0).all() for t in only_inf)
    # only the selected centers carry gradient
    ref_idx = torch.sort(torch.cdist(f.detach(), mu.detach()), dim=1, stable=True).indices[:, :2]
    unused = torch.ones(12, dtype=torch.bool, device=dev)
    unused[ref_idx.flatten()] = False
    assert (gm[unused] == 0).all()


def test_ties_go_to_lower_index(backend):
    _, dev = backend
    f = torch.tensor([[0.0, 0.0], [5.0, 5.0]], dtype=torch.float32, device=dev)
    mu = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 4.0]], dtype=torch.float32, device=dev)
    cls = torch.tensor([2, 0, 1, 0], device=dev)
    out = clustr_fast.soft_cluster_logits(f, mu, cls, 3, variance=1.0, top_d=1).cpu()
    assert out[0, 2] == 0 and torch.isinf(out[0, :2]).all()
    out2 = clustr_fast.soft_cluster_logits(f, mu, cls, 3, variance=1.0, top_d=2).cpu()
    assert torch.isinf(out2[0, 1]) and torch.isfinite(out2[0, [0, 2]]).all()
    torch.testing.assert_close(out2[0, [0, 2]], torch.full((2,), math.log(0.5)))
    # many equal distances across tiles: integer grid, the selection must be the first indices
    pts = torch.tensor([[float(i % 3), 0.0] for i in range(40)], device=dev)
    q = torch.tensor([[1.0, 0.0]], device=dev)
    c40 = (torch.arange(40) % 5).to(dev)
    for top_d in (1, 3, 7):
        got = clustr_fast.soft_cluster_logits(q, pts, c40, 5, variance=0.7, top_d=top_d).cpu()
        want = oracle(q, pts, c40, 5, 0.7, top_d)
        _check_values(got, want, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selection_is_the_top_d_by_distance_then_index(backend, dtype):
    """The selected centers of every row are the first top_d by (distance, index). Small integer
    coordinates: every distance is exact in float32 and most are tied. The top_d values reach
    every path of the CPU selection (group bound or none, few or many candidates). On a GPU the
    kernels keep a running list of next_pow2(top_d) entries per row: top_d up to 64 there, as in
    the other GPU tests, so that the GPU run does not compile 256- and 512-wide lists."""
    name, dev = backend
    g = torch.Generator().manual_seed(77)
    f = torch.randint(-2, 3, (9, 5), generator=g).to(dtype)
    mu = torch.randint(-2, 3, (300, 5), generator=g).to(dtype)
    cls = torch.arange(300) % 7
    d = (f.double()[:, None, :] - mu.double()[None, :, :]).square().sum(-1)
    for top_d in (1, 7, 20, 33, 64, 100, 299, 300):
        if name == "triton" and dev.type == "cpu" and top_d not in (7, 100):
            continue  # the interpreter is slow
        if dev.type == "cuda" and top_d > 64:
            continue
        _, idx = soft_cluster_logits_op(f.to(dev), mu.to(dev), cls.to(dev), 7, 1.0, top_d, 0)
        want = torch.sort(d, dim=1, stable=True).indices[:, :top_d]
        assert torch.equal(idx.cpu().sort(1).values, want.sort(1).values), f"top_d={top_d}"


def test_huge_distances_stay_finite(backend):
    _, dev = backend
    g = torch.Generator().manual_seed(5)
    f = (300.0 * torch.randn(20, 6, generator=g)).to(dev)
    mu = (300.0 * torch.randn(9, 6, generator=g)).to(dev)
    cls = (torch.arange(9) % 3).to(dev)
    for top_d in (3, None):
        out = clustr_fast.soft_cluster_logits(f, mu, cls, 3, variance=0.5, top_d=top_d)
        ref = oracle(f, mu, cls, 3, 0.5, top_d)
        assert ref[torch.isfinite(ref)].min() < -1e4  # exp() of these underflows: log space is needed
        # float32 distances carry an error relative to ||f||^2 + ||mu||^2 (the expansion's cancellation)
        scale = (f.cpu().double().square().sum(1, keepdim=True) + mu.cpu().double().square().sum(1).max()) / 1.0
        _check_values(out, ref, torch.float32, scale=scale.clamp_min(1.0))


def test_overflowing_distances_give_minus_inf_never_nan(backend):
    """Squared distances past the float32 range (here |f| = 3e19) are +inf, so every z of the row is
    -inf: every backend returns -inf for every class of that row (probabilities 0), with zero
    gradient, never NaN; the other rows are unaffected. (The float64 reference keeps the range.)"""
    _, dev = backend
    f = torch.tensor([[3e19, 0.0], [1.0, 0.0]], device=dev, requires_grad=True)
    mu = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0]], device=dev, requires_grad=True)
    cls = torch.tensor([0, 1, 1], device=dev)
    out = clustr_fast.soft_cluster_logits(f, mu, cls, 2, variance=1.0, top_d=2)
    assert torch.isneginf(out[0]).all() and torch.isfinite(out[1]).all()
    ref = oracle(f[1:], mu, cls, 2, 1.0, 2)
    _check_values(out[1:].detach(), ref, torch.float32)
    gf, gm = torch.autograd.grad(out[1].sum() + torch.where(torch.isfinite(out[0]), out[0], 0.0).sum(), (f, mu))
    assert torch.isfinite(gf).all() and torch.isfinite(gm).all() and (gf[0] == 0).all()


def test_predict_and_head(backend):
    _, dev = backend
    f, mu, cls, nc, var = _inputs(50, 8, 5, 2, torch.float32, dev, seed=21)
    labels, probs = clustr_fast.soft_cluster_predict(f, mu, cls, nc, variance=var, top_d=3)
    ref = oracle(f, mu, cls, nc, var, 3)
    assert labels.dtype == torch.int64 and torch.equal(labels.cpu(), ref.argmax(1))
    torch.testing.assert_close(probs.cpu().double(), ref.exp(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs.sum(1).cpu(), torch.ones(50), atol=1e-5, rtol=0)
    head = SoftClusterHead(mu, cls, nc, var, top_d=3).to(dev)
    x = f.clone().requires_grad_(True)
    logits = head(x)
    torch.testing.assert_close(logits.cpu().double()[torch.isfinite(ref)], ref[torch.isfinite(ref)],
                               atol=1e-5, rtol=1e-5)
    loss = torch.nn.functional.nll_loss(logits, labels)  # what an attack would do
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


def test_precision_high_values_are_exact_for_the_selection(backend):
    _, dev = backend
    f, mu, cls, nc, var = _inputs(64, 40, 48, 2, torch.float32, dev, seed=31)
    for precision in ("high", "medium"):
        out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=5, precision=precision)
        ref = oracle(f, mu, cls, nc, var, 5)
        same = (torch.isinf(out.cpu()) == torch.isinf(ref)).all(1)
        assert same.float().mean() > 0.9  # a reduced-precision selection may swap near-ties
        fin = torch.isfinite(ref) & same[:, None]
        assert_close_f64(out.cpu()[fin], ref[fin], dtype=torch.float32)


def test_non_contiguous_inputs(backend):
    _, dev = backend
    g = torch.Generator().manual_seed(41)
    f = torch.randn(40, 30, generator=g).to(dev)[::2, ::3]
    mu = torch.randn(30, 20, generator=g).to(dev).t()[::2, :10]
    cls = (torch.arange(20, device=dev) % 4)[::2]
    assert not f.is_contiguous() and not mu.is_contiguous() and not cls.is_contiguous()
    f.requires_grad_(True)
    out = clustr_fast.soft_cluster_logits(f, mu, cls, 4, variance=2.0, top_d=4)
    ref = oracle(f, mu, cls, 4, 2.0, 4)
    _check_values(out.detach(), ref, torch.float32)
    out.masked_fill(torch.isinf(out), 0).sum().backward()
    assert torch.isfinite(f.grad).all()


def test_bad_inputs_name_the_argument():
    f, mu, cls = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    call = clustr_fast.soft_cluster_logits
    with pytest.raises(ValueError, match="top_d"):
        call(f, mu, cls, 3, variance=1.0, top_d=0)
    with pytest.raises(ValueError, match="top_d"):
        call(f, mu, cls, 3, variance=1.0, top_d=6)
    with pytest.raises(TypeError, match="top_d"):
        call(f, mu, cls, 3, variance=1.0, top_d=2.0)
    with pytest.raises(ValueError, match="center_classes"):
        call(f, mu, torch.tensor([0, 1, 2, 0, 3]), 3, variance=1.0)
    with pytest.raises(ValueError, match="center_classes"):
        call(f, mu, torch.tensor([0, 1, -1, 0, 1]), 3, variance=1.0)
    with pytest.raises(ValueError, match="center_classes"):
        call(f, mu, cls[:4], 3, variance=1.0)
    with pytest.raises(ValueError, match="variance"):
        call(f, mu, cls, 3, variance=0.0)
    with pytest.raises(ValueError, match="variance"):
        call(f, mu, cls, 3, variance=-2.0)
    with pytest.raises(ValueError, match="variance"):
        call(f, mu, cls, 3, variance=torch.tensor(-1.0))
    with pytest.raises(TypeError, match="variance"):
        call(f, mu, cls, 3, variance=None)
    with pytest.raises(ValueError, match="num_classes"):
        call(f, mu, cls, 0, variance=1.0)
    with pytest.raises(ValueError, match="centers"):
        call(f, torch.randn(5, 4), cls, 3, variance=1.0)
    with pytest.raises(TypeError, match="centers"):
        call(f, mu.double(), cls, 3, variance=1.0)
    with pytest.raises(ValueError, match="precision"):
        call(f, mu, cls, 3, variance=1.0, precision="fast")
    with pytest.raises(ValueError, match="top_d"):
        clustr_fast.soft_cluster_predict(f, mu, cls, 3, variance=1.0, top_d=0)


def test_opcheck_forward_and_backward(backend):
    _, dev = backend
    f, mu, cls, nc, var = _inputs(9, 6, 5, 2, torch.float32, dev, seed=51)
    f.requires_grad_(True)
    mu.requires_grad_(True)
    torch.library.opcheck(soft_cluster_logits_op, (f, mu, cls, nc, var, 2, 0))
    torch.library.opcheck(soft_cluster_logits_op, (f, mu, cls, nc, var, 6, 1))
    out, idx = soft_cluster_logits_op(f.detach(), mu.detach(), cls, nc, var, 2, 0)
    g = torch.randn(out.shape, device=dev)
    torch.library.opcheck(torch.ops.clustr_fast.soft_cluster_logits_backward.default,
                          (g, out, idx, f.detach(), mu.detach(), cls, var))


@pytest.mark.parametrize("top_d", [1, 3, None])
def test_gradcheck_float64(backend, top_d):
    name, dev = backend
    f, mu, cls, nc, var = _inputs(5, 6, 3, 2, F64, dev, seed=61)
    f.requires_grad_(True)
    mu.requires_grad_(True)
    absent = torch.isinf(clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=top_d))

    def fn(a, b):
        return clustr_fast.soft_cluster_logits(a, b, cls, nc, variance=var, top_d=top_d).masked_fill(absent, 0.0)

    # full Jacobians on the C++ extension; the interpreted Triton kernels use the fast (random projection) mode
    assert torch.autograd.gradcheck(fn, (f, mu), fast_mode=(name == "triton" and dev.type == "cpu"))


def test_torch_compile_fullgraph_cpu():
    f, mu, cls, nc, var = _inputs(17, 6, 8, 2, torch.float32, "cpu", seed=71)

    @torch.compile(fullgraph=True, backend="eager")
    def fn(a, b):
        out = clustr_fast.soft_cluster_logits(a, b, cls, nc, variance=var, top_d=3)
        return out.exp().sum()

    torch.testing.assert_close(fn(f, mu), clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var,
                                                                           top_d=3).exp().sum())


# ---------------------------------------------------------------- GPU only (benchmarks/gpu_check.sh)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda", "triton", "auto"])  # auto: Triton forward, CUDA backward
@pytest.mark.parametrize("precision", ["highest", "high"])
def test_gpu_large_c_matches_float64(name, precision):
    if name != "auto" and name not in clustr_fast.backends():
        pytest.skip(f"{name} backend not built")
    f, mu, cls, nc, var = _inputs(3000, 2000, 64, 2, torch.float32, "cuda", seed=81)
    f.requires_grad_(True)
    mu.requires_grad_(True)
    with clustr_fast.use_backend(name):
        out = clustr_fast.soft_cluster_logits(f, mu, cls, nc, variance=var, top_d=32, precision=precision)
        gout = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        gf, gm = torch.autograd.grad(out, (f, mu), gout)
    ref = oracle(f, mu, cls, nc, var, 32)
    same = (torch.isinf(out.cpu()) == torch.isinf(ref)).all(1)
    assert same.float().mean() > (0.999 if precision == "highest" else 0.95)
    fin = torch.isfinite(ref) & same[:, None]
    assert_close_f64(out.detach().cpu()[fin], ref[fin], dtype=torch.float32)
    f64 = f.detach().cpu().double().requires_grad_(True)
    m64 = mu.detach().cpu().double().requires_grad_(True)
    r64 = R.soft_cluster_logits(f64, m64, cls.cpu(), nc, variance=var, top_d=32)
    wf, wm = torch.autograd.grad(r64, (f64, m64), gout.cpu().double())
    if precision == "highest" and bool(same.all()):
        assert_close_f64(gf.cpu(), wf, dtype=torch.float32, scale=wf.abs().max())
        assert_close_f64(gm.cpu(), wm, dtype=torch.float32, scale=wm.abs().max())
