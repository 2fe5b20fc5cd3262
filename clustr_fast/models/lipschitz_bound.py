"""Upper bounds on the L2 Lipschitz constant of a network's outputs.

A network with a ``lipschitz_bound(output=...)`` method (the Lipschitz-bounded models of
``clustr_fast.models.lipschitz``, chains of layers with proven constants) gives its own bound.
For any other network, ``lipschitz_bound(net, example, output=1)`` traces ``net`` with ``torch.fx`` and
propagates a bound ``L(node)`` through its graph (``||node(x) - node(y)|| <=
L(node) ||x - y||``):

- a layer ``g`` after ``u``: ``L = Lip(g) * L(u)`` (so a chain gives the product
  of per-layer spectral norms, an upper bound of the true constant);
- ``u + v``: ``L(u) + L(v)``; ``cat(u, v)``: ``sqrt(L(u)^2 + L(v)^2)``;
  ``u * c``, ``u / c`` with a constant ``c``: ``max|c| L(u)``, ``L(u) / min|c|``.

Per-layer constants: ``Linear`` and small linear operators (convolutions and
average pools at the traced input shape, at most ``EXACT_LIMIT`` inputs) get
their exact spectral norm from an SVD in float64. Larger convolutions get the
smaller of two proven bounds (``conv2d_bound``): the circulant bound (the
strided convolution rewritten as a stride-1 one over the polyphase components of
the zero-padded input, bounded by the circular convolution on that grid, whose
norm is the largest singular value of the kernel's ``[Cout, Cin]`` DFT over the
frequencies) and ``sqrt(ceil(kh/sh) ceil(kw/sw)) ||W||_2`` of the kernel matrix
``W [Cout, Cin kh kw]``. Larger average pools get ``sqrt(||A||_1 ||A||_inf)``,
exact for their nonnegative matrices from one forward and one backward pass.
``BatchNorm`` (eval mode) is the diagonal scale ``gamma / sqrt(var + eps)``;
``ReLU``-like activations are 1-Lipschitz; ``MaxPool`` is ``sqrt`` of the number
of windows one input lies in. Every constant is an upper bound up to float64
rounding (relative 1e-12 or so, far below the float32 rounding of the radii);
none is an estimate. Anything else raises ``ValueError`` naming it:
an unknown op cannot be bounded soundly.

The bounds sit with the models, below the training loop (the certified-margin term) and the
evaluation (the certified radius); ``clustr_fast.robust.lipschitz`` is this module.
"""
from __future__ import annotations

import copy
import math
import operator

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

EXACT_LIMIT = 1024      # inputs up to which a linear operator is materialised and SVD'd
POWER_SLACK = 1e-3      # relative slack of operator_norm's power-iteration estimate (not used in bounds)
CIRCULANT_CHUNK = 1 << 23  # complex entries of the DFT blocks handled at once by conv2d_circulant_bound

_ONE_LIPSCHITZ_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Hardtanh, nn.Identity, nn.Dropout,
    nn.Flatten, nn.Unflatten, nn.ELU, nn.Softsign,
)
_ONE_LIPSCHITZ_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, torch.tanh, F.tanh, F.hardtanh, F.elu,
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, F.dropout,
    operator.getitem,
}
_ONE_LIPSCHITZ_METHODS = {
    "relu", "tanh", "flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze",
    "clone", "float", "to", "__getitem__", "getitem",
}


def spectral_norm_matrix(weight: torch.Tensor) -> float:
    """Exact largest singular value of ``weight`` viewed as ``[rows, -1]``: the square
    root of the top eigenvalue of the smaller Gram matrix, in float64."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0).sqrt())


def operator_norm(fn, in_shape, *, tol: float = 1e-5, max_iter: int = 300, seed: int = 0) -> float:
    """Spectral norm of the linear map ``fn`` on inputs of shape ``in_shape`` (no batch dim).

    Exact (SVD of the materialised ``[n_out, n_in]`` matrix) when ``n_in <= EXACT_LIMIT``;
    otherwise an *estimate*: power iteration on ``A^T A`` (``A^T`` from autograd), converged to
    relative change ``< tol`` and multiplied by ``1 + POWER_SLACK``. Power iteration approaches
    the norm from below, so past ``EXACT_LIMIT`` this is not a proven bound; ``lipschitz_bound``
    uses :func:`conv2d_bound` and :func:`nonnegative_operator_bound` there instead.
    """
    n = math.prod(in_shape)
    if n <= EXACT_LIMIT:
        return _exact_norm(fn, in_shape)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn((1, *in_shape), dtype=torch.float64, generator=g)
    v /= v.norm()
    sigma = 0.0
    for _ in range(max_iter):
        x = v.clone().requires_grad_(True)
        y = fn(x)
        (w,) = torch.autograd.grad(y, x, grad_outputs=y)       # A^T A v
        new = float(w.norm()) ** 0.5
        v = (w / w.norm()).detach()
        if abs(new - sigma) <= tol * new:
            sigma = new
            break
        sigma = new
    return sigma * (1.0 + POWER_SLACK)


def _exact_norm(fn, in_shape) -> float:
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        mat = fn(basis).reshape(n, -1)
    return spectral_norm_matrix(mat)


def nonnegative_operator_bound(fn, in_shape) -> float:
    """``sqrt(||A||_1 ||A||_inf)`` >= ``||A||_2`` for a linear map ``fn`` whose matrix ``A`` has no
    negative entry (average pools): then the row sums ``A 1`` and column sums ``A^T 1`` are the
    absolute ones, from one forward and one backward pass in float64. Exact for pools whose
    windows do not overlap (each output the mean of its own inputs: ``1/sqrt(window)``)."""
    ones = torch.ones((1, *in_shape), dtype=torch.float64, requires_grad=True)
    y = fn(ones)
    (col,) = torch.autograd.grad(y, ones, grad_outputs=torch.ones_like(y))
    row_max, col_max = float(y.detach().max()), float(col.max())
    # nonnegative sums do not prove nonnegative entries: callers pass average pools only; this
    # catches a gross misuse
    if float(y.detach().min()) < 0 or float(col.min()) < 0:
        raise ValueError("lipschitz: nonnegative_operator_bound on an operator with negative entries")
    return math.sqrt(row_max * col_max)


def _pair(v):
    return (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(t) for t in v)


def _padding_totals(padding, kernel, dilation):
    """Zeros added along H and W (both sides together) by a conv's ``padding`` argument."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        if padding == "same":  # PyTorch pads dilation * (k - 1) in all, split between the sides
            return tuple(d * (k - 1) for k, d in zip(kernel, dilation))
        raise ValueError(f"lipschitz: unsupported conv padding {padding!r}")
    ph, pw = _pair(padding)
    return 2 * ph, 2 * pw


def conv2d_circulant_bound(weight, in_shape, stride=1, padding=0, dilation=1, groups=1) -> float:
    """Proven upper bound on ``||conv2d(., weight, stride, padding, dilation, groups)||_2`` on
    ``[Cin, H, W]`` inputs (zero padding), tight for inputs large against the kernel.

    With s the stride, the zero-padded input of size ``Hp = H + pad`` sits in a grid of
    ``n1 = max(ceil(Hp / sh), Qh)`` polyphase cells (more zeros: an isometric embedding). A kernel
    tap at offset ``u * dh = q * sh + r`` reads phase ``r`` of cell ``i + q``, so the convolution is
    a stride-1 one with ``Cin * sh * sw`` input channels (the phases: a permutation of the input)
    and a ``Qh x Qw`` kernel, ``Qh = (kh - 1) dh // sh + 1``, whose outputs are some outputs of the
    circular convolution on the ``n1 x n2`` grid (none of them wraps around). The DFT diagonalises
    that one into ``[Cout, Cin s^2]`` blocks, so its norm is the largest singular value of the
    kernel's DFT over the frequencies (half of them: real kernels); groups are diagonal blocks.
    """
    w = weight.detach().double()
    cout, cin_g, kh, kw = w.shape
    _, H, W = in_shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    pad_h, pad_w = _padding_totals(padding, (kh, kw), (dh, dw))
    qh, qw = (kh - 1) * dh // sh + 1, (kw - 1) * dw // sw + 1
    poly = torch.zeros((cout, cin_g, sh, sw, qh, qw), dtype=torch.float64)
    for u in range(kh):
        for v in range(kw):
            (a, r), (b, t) = divmod(u * dh, sh), divmod(v * dw, sw)
            poly[:, :, r, t, a, b] = w[:, :, u, v]
    n1 = max(-(-(H + pad_h) // sh), qh)
    n2 = max(-(-(W + pad_w) // sw), qw)
    spec = torch.fft.rfft2(poly.reshape(groups, cout // groups, cin_g * sh * sw, qh, qw), s=(n1, n2))
    blocks = spec.permute(0, 3, 4, 1, 2).reshape(-1, cout // groups, cin_g * sh * sw)  # one per (group, frequency)
    per_block = blocks.shape[1] * blocks.shape[2]
    step = max(1, CIRCULANT_CHUNK // per_block)  # Gram matrices of at most CIRCULANT_CHUNK entries at a time
    top = 0.0
    for b0 in range(0, blocks.shape[0], step):
        m = blocks[b0:b0 + step]
        gram = m @ m.mH if m.shape[-2] <= m.shape[-1] else m.mH @ m
        top = max(top, float(torch.linalg.eigvalsh(gram)[..., -1].max()))
    return math.sqrt(max(top, 0.0))


def conv_kernel_bound(weight, stride=1, dilation=1, groups=1) -> float:
    """Proven bound ``sqrt(ceil(((kh-1) dh + 1) / sh) ceil(((kw-1) dw + 1) / sw)) ||W||_2``,
    ``W [Cout, Cin/groups * kh * kw]`` (for grouped convolutions the max over groups of each
    group's norm): each input element is read by at most that many output windows."""
    w = weight.detach().double()
    kh, kw = w.shape[2:]
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    overlap = math.ceil(((kh - 1) * dh + 1) / sh) * math.ceil(((kw - 1) * dw + 1) / sw)
    per_group = w.shape[0] // groups
    norms = [spectral_norm_matrix(w[g * per_group:(g + 1) * per_group]) for g in range(groups)]
    return math.sqrt(overlap) * max(norms)


def conv2d_bound(weight, in_shape, stride=1, padding=0, dilation=1, groups=1) -> float:
    """``||conv2d||_2`` on ``[Cin, H, W]`` inputs (bias dropped): exact (SVD) up to ``EXACT_LIMIT``
    inputs, else the smaller of :func:`conv2d_circulant_bound` and :func:`conv_kernel_bound`."""
    w = weight.detach().double()
    if math.prod(in_shape) <= EXACT_LIMIT:
        return _exact_norm(lambda x: F.conv2d(x, w, None, stride, padding, dilation, groups), tuple(in_shape))
    return min(conv2d_circulant_bound(w, in_shape, stride, padding, dilation, groups),
               conv_kernel_bound(w, stride, dilation, groups))


def conv2d_norm(conv: nn.Conv2d, in_shape) -> float:
    """Spectral norm of ``conv`` (bias dropped) as an operator on ``[C, H, W]`` inputs, or past
    ``EXACT_LIMIT`` inputs a proven upper bound of it (:func:`conv2d_bound`)."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"lipschitz: Conv2d with padding_mode={conv.padding_mode!r} is not supported")
    return conv2d_bound(conv.weight, tuple(in_shape), conv.stride, conv.padding, conv.dilation, conv.groups)


def pool_norm(fn, in_shape) -> float:
    """``||fn||_2`` of an average pool at ``in_shape``: exact up to ``EXACT_LIMIT`` inputs, else
    :func:`nonnegative_operator_bound`."""
    if math.prod(in_shape) <= EXACT_LIMIT:
        return _exact_norm(fn, tuple(in_shape))
    return nonnegative_operator_bound(fn, tuple(in_shape))


def batchnorm_scale(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """``max |gamma / sqrt(running_var + eps)|``: BatchNorm in eval mode is a diagonal affine map."""
    if bn.training or bn.running_var is None:
        raise ValueError("lipschitz: BatchNorm must be in eval mode with running statistics")
    scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    return float(scale.abs().max())


def maxpool_constant(pool) -> float:
    """``sqrt(m)``, ``m`` = the most windows one input element lies in."""
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)
    k, s, d = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.dilation)
    m = 1
    for ki, si, di in zip(k, s, d):
        m *= math.ceil(((ki - 1) * di + 1) / si)
    return math.sqrt(m)


def module_constant(mod: nn.Module, in_shape) -> float:
    """Lipschitz constant (an upper bound) of one leaf module at input shape ``in_shape``."""
    if isinstance(mod, nn.Linear):
        return spectral_norm_matrix(mod.weight)
    if isinstance(mod, nn.Conv2d):
        return conv2d_norm(mod, in_shape)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return batchnorm_scale(mod)
    if isinstance(mod, _ONE_LIPSCHITZ_MODULES):
        if isinstance(mod, nn.Dropout) and mod.training:
            raise ValueError("lipschitz: Dropout must be in eval mode")
        if isinstance(mod, nn.LeakyReLU) and abs(mod.negative_slope) > 1:
            return abs(mod.negative_slope)
        if isinstance(mod, nn.ELU):
            return max(1.0, mod.alpha)
        return 1.0
    if _is_normalize(mod):
        return float(1.0 / mod.std.detach().double().abs().min())
    if isinstance(mod, nn.Sigmoid):
        return 0.25
    if isinstance(mod, nn.MaxPool2d):
        return maxpool_constant(mod)
    if isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return pool_norm(_double(mod), tuple(in_shape))
    raise ValueError(f"lipschitz: no Lipschitz bound for module {type(mod).__name__}")


def _is_normalize(mod) -> bool:
    """Per-channel ``(x - mean) / std`` layers (``clustr_fast.models.normalize.Normalize``)."""
    return type(mod).__name__ == "Normalize" and isinstance(getattr(mod, "std", None), torch.Tensor)


class _Tracer(fx.Tracer):
    """Keeps normalisation layers as leaves (their forward branches on ``x.dim()``)."""

    def is_leaf_module(self, m, qualname):
        return _is_normalize(m) or super().is_leaf_module(m, qualname)


def _double(mod):
    return copy.deepcopy(mod).double()


def _const_abs(value, op_name):
    """``(max|c|, min|c|)`` of a constant operand (scalar or tensor)."""
    if isinstance(value, torch.Tensor):
        a = value.detach().double().abs()
        return float(a.max()), float(a.min())
    if isinstance(value, (int, float)):
        return abs(float(value)), abs(float(value))
    raise ValueError(f"lipschitz: unsupported constant operand {type(value).__name__} in {op_name}")


def _shape_of(node):
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if meta is None or not hasattr(meta, "shape"):
        raise ValueError(f"lipschitz: no tensor shape recorded for node {node}")
    return tuple(meta.shape[1:])


def _functional_linear_norm(node, gm, args):
    """``F.linear``/``F.conv2d``/pools called as functions on weights held by the module."""
    fn = node.target
    const = [_value_of(a, gm) for a in args[1:]]
    if fn is F.linear:
        return spectral_norm_matrix(const[0])
    if fn is F.conv2d:
        kw = dict(node.kwargs)
        names = ["bias", "stride", "padding", "dilation", "groups"]
        for name, v in zip(names, args[2:]):
            kw[name] = _value_of(v, gm)
        kw.pop("bias", None)
        return conv2d_bound(const[0], _shape_of(args[0]), kw.get("stride", 1), kw.get("padding", 0),
                            kw.get("dilation", 1), kw.get("groups", 1))
    # average pools are linear: take their norm at the traced shape
    other = [_value_of(a, gm) for a in args[1:]]
    kw = {k: _value_of(v, gm) for k, v in node.kwargs.items()}
    return pool_norm(lambda x: fn(x, *other, **kw), _shape_of(args[0]))


def _value_of(a, gm):
    if isinstance(a, fx.Node):
        if a.op == "get_attr":
            obj = gm
            for part in a.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise ValueError(f"lipschitz: operand {a} is not a constant")
    return a


_LINEAR_FUNCTIONS = {F.linear, F.conv2d, F.avg_pool2d, F.adaptive_avg_pool2d}


def lipschitz_bound(net: nn.Module, example: torch.Tensor, output: int | None = 1) -> float:
    """Upper bound on the L2 Lipschitz constant of ``x -> net(x)[output]``.

    ``example``: one input batch (its shape fixes the conv operators; values do
    not matter). ``output=None`` when ``net`` returns a single tensor. The net
    must be in eval mode. Raises ``ValueError`` naming any op it cannot bound.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"lipschitz_bound: `net` must be an nn.Module, got {type(net).__name__}")
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"lipschitz_bound: `example` must be a torch.Tensor, got {type(example).__name__}")
    if net.training:
        raise ValueError("lipschitz_bound: `net` must be in eval mode (call net.eval())")
    own = getattr(net, "lipschitz_bound", None)
    if callable(own) and output is not None:  # Lipschitz-bounded models (models/lipschitz.py) prove their own
        return float(own(output=output))
    try:
        tracer = _Tracer()
        gm = fx.GraphModule(net, tracer.trace(net))
    except Exception as exc:  # control flow on values etc.
        raise ValueError(f"lipschitz_bound: cannot trace {type(net).__name__} with torch.fx ({exc})") from exc
    param = next(iter(net.parameters()), None)
    ex = example[:1].detach()
    if param is not None:
        ex = ex.to(param.device, param.dtype)
    with torch.no_grad():
        ShapeProp(gm).propagate(ex)
    modules = dict(gm.named_modules())
    lip: dict[fx.Node, float | None] = {}       # None: does not depend on the input

    def L(a):
        if isinstance(a, fx.Node):
            return lip[a]
        if isinstance(a, (tuple, list)):
            vals = [L(v) for v in a]
            dep = [v for v in vals if v is not None]
            return math.sqrt(sum(v * v for v in dep)) if dep else None
        return None

    result = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            lip[node] = 1.0 if not lip else None
        elif node.op == "get_attr":
            lip[node] = None
        elif node.op == "call_module":
            src = L(node.args[0])
            lip[node] = None if src is None else src * module_constant(modules[node.target], _shape_of(node.args[0]))
        elif node.op in ("call_function", "call_method"):
            lip[node] = _propagate(node, gm, L)
        elif node.op == "output":
            out = node.args[0]
            if output is not None:
                if not isinstance(out, (tuple, list)):
                    raise ValueError("lipschitz_bound: `net` returns one tensor; pass output=None")
                out = out[output]
            result = L(out)
    if result is None:
        raise ValueError("lipschitz_bound: the selected output does not depend on the input")
    return float(result)


def _propagate(node, gm, L):
    target, args = node.target, node.args
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    deps = [L(a) for a in args]
    dep_vals = [d for d in deps if d is not None]
    if not dep_vals:
        return None
    if target in (operator.add, torch.add, operator.sub, torch.sub, "add", "sub"):
        return sum(dep_vals)
    if target in (operator.mul, torch.mul, "mul"):
        if len(dep_vals) > 1:
            raise ValueError("lipschitz: product of two input-dependent tensors is not supported")
        c = args[1] if deps[0] is not None else args[0]
        return dep_vals[0] * _const_abs(_value_of(c, gm), name)[0]
    if target in (operator.truediv, torch.div, "div"):
        if deps[0] is None or len(dep_vals) > 1:
            raise ValueError("lipschitz: division by an input-dependent tensor is not supported")
        low = _const_abs(_value_of(args[1], gm), name)[1]
        if low == 0:
            raise ValueError("lipschitz: division by zero constant")
        return deps[0] / low
    if target in (torch.cat, "cat"):
        return L(args[0])
    if target in _LINEAR_FUNCTIONS:
        return deps[0] * _functional_linear_norm(node, gm, args)
    if target is F.max_pool2d:
        k = args[1] if len(args) > 1 else node.kwargs["kernel_size"]
        s = args[2] if len(args) > 2 else node.kwargs.get("stride") or k
        return deps[0] * maxpool_constant(nn.MaxPool2d(k, s))
    if target in (torch.mean, "mean"):
        dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
        shape = _shape_of(args[0])
        dims = [dims] if isinstance(dims, int) else list(dims or range(1, len(shape) + 1))
        count = math.prod(shape[d - 1 if d > 0 else d] for d in dims)
        return deps[0] / math.sqrt(count)
    if target in _ONE_LIPSCHITZ_FUNCTIONS or target in _ONE_LIPSCHITZ_METHODS:
        if deps[0] is None:
            raise ValueError(f"lipschitz: unsupported use of {name}")
        return deps[0]
    raise ValueError(f"lipschitz: no Lipschitz bound for operation {name}")
