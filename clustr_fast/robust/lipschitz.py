"""Upper bounds on the L2 Lipschitz constant of a network's outputs.

``lipschitz_bound(net, example, output=1)`` traces ``net`` with ``torch.fx`` and
propagates a bound ``L(node)`` through its graph (``||node(x) - node(y)|| <=
L(node) ||x - y||``):

- a layer ``g`` after ``u``: ``L = Lip(g) * L(u)`` (so a chain gives the product
  of per-layer spectral norms, an upper bound of the true constant);
- ``u + v``: ``L(u) + L(v)``; ``cat(u, v)``: ``sqrt(L(u)^2 + L(v)^2)``;
  ``u * c``, ``u / c`` with a constant ``c``: ``max|c| L(u)``, ``L(u) / min|c|``.

Per-layer constants: ``Linear`` and small linear operators (convolutions and
average pools at the traced input shape, at most ``EXACT_LIMIT`` inputs) get
their exact spectral norm from an SVD in float64; larger ones get power
iteration on ``A^T A`` (``conv2d`` and its transpose, so padding, stride and
dilation are those of the layer), run to a relative change below ``tol`` and
multiplied by ``1 + POWER_SLACK``, then capped by the sound bound
``sqrt(ceil(kh/sh) ceil(kw/sw)) ||W||_2`` of the kernel matrix ``W [Cout, Cin kh kw]``.
``BatchNorm`` (eval mode) is the diagonal scale ``gamma / sqrt(var + eps)``;
``ReLU``-like activations are 1-Lipschitz; ``MaxPool`` is ``sqrt`` of the number
of windows one input lies in. Anything else raises ``ValueError`` naming it:
an unknown op cannot be bounded soundly.
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
POWER_SLACK = 1e-3      # relative slack added to a converged power-iteration estimate

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
    otherwise power iteration on ``A^T A`` (``A^T`` from autograd), converged to
    relative change ``< tol`` and multiplied by ``1 + POWER_SLACK``.
    """
    n = math.prod(in_shape)
    if n <= EXACT_LIMIT:
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
        with torch.no_grad():
            mat = fn(basis).reshape(n, -1)
        return spectral_norm_matrix(mat)
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


def _conv_kernel_bound(conv: nn.Conv2d) -> float:
    """Sound bound ``sqrt(ceil(kh/sh) ceil(kw/sw)) ||W [Cout, Cin/groups*kh*kw]||_2``
    (for grouped convolutions the max over groups of each group's norm)."""
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    overlap = math.ceil(((kh - 1) * dh + 1) / sh) * math.ceil(((kw - 1) * dw + 1) / sw)
    w = conv.weight.detach().double()
    per_group = w.shape[0] // conv.groups
    norms = [spectral_norm_matrix(w[g * per_group:(g + 1) * per_group]) for g in range(conv.groups)]
    return math.sqrt(overlap) * max(norms)


def conv2d_norm(conv: nn.Conv2d, in_shape) -> float:
    """Spectral norm of ``conv`` (bias dropped) as an operator on ``[C, H, W]`` inputs."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"lipschitz: Conv2d with padding_mode={conv.padding_mode!r} is not supported")
    w = conv.weight.detach().double()

    def apply(x):
        return F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    est = operator_norm(apply, tuple(in_shape))
    if math.prod(in_shape) <= EXACT_LIMIT:
        return est
    return min(est, _conv_kernel_bound(conv))


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
        ref = _double(mod)
        return operator_norm(ref, tuple(in_shape))
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
        w = const[0].detach().double()
        return operator_norm(lambda x: F.conv2d(x, w, None, **kw), _shape_of(args[0]))
    # average pools are linear: take their norm at the traced shape
    other = [_value_of(a, gm) for a in args[1:]]
    kw = {k: _value_of(v, gm) for k, v in node.kwargs.items()}
    return operator_norm(lambda x: fn(x, *other, **kw), _shape_of(args[0]))


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
