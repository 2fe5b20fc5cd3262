"""``pairwise_sqdist``: squared Euclidean distances between rows, as a custom op.

    out[i,k] = max(||x_i||^2 + ||c_k||^2 - 2 x_i.c_k, 0)      x [N,d], c [K,d] -> [N,K]

Accumulated in float32 (float64 for float64 inputs); the result has that dtype.
Backward (also a custom op): grad_x = 2 (rowsum(g) x - g c), grad_c = 2 (colsum(g) c - g^T x).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._validate import acc_dtype, check_pairwise_sqdist, precision_code, precision_name
from ..reference import pairwise_sqdist as _reference
from ._dispatch import extension_kernel, run, triton_kernel

def _reference_fwd(x, c, precision):
    return _reference(x, c, precision=precision_name(precision))


def _reference_bwd(grad, x, c, precision):
    """Plain-PyTorch backward: grad_x = 2 (rowsum(g) x - g c), grad_c = 2 (colsum(g) c - g^T x)."""
    acc = acc_dtype(x.dtype)
    g, xa, ca = grad.to(acc), x.to(acc), c.to(acc)
    gx = 2.0 * (g.sum(1, keepdim=True) * xa - g @ ca)
    gc = 2.0 * (g.sum(0).unsqueeze(1) * ca - g.t() @ xa)
    return gx, gc


_FWD = {
    "reference": _reference_fwd,
    "cpu": extension_kernel("pairwise_sqdist"),
    "cuda": extension_kernel("pairwise_sqdist"),
    "triton": triton_kernel("pairwise_sqdist", "pairwise_sqdist"),
}
_BWD = {
    "reference": _reference_bwd,
    "cpu": extension_kernel("pairwise_sqdist_backward"),
    "cuda": extension_kernel("pairwise_sqdist_backward"),
    "triton": triton_kernel("pairwise_sqdist", "pairwise_sqdist_backward"),
}


@torch.library.custom_op("clustr_fast::pairwise_sqdist", mutates_args=())
def pairwise_sqdist_op(x: Tensor, c: Tensor, precision: int) -> Tensor:
    return run("pairwise_sqdist", x.device, _FWD, x, c, precision)


@pairwise_sqdist_op.register_fake
def _(x, c, precision):
    return x.new_empty((x.shape[0], c.shape[0]), dtype=acc_dtype(x.dtype))


@torch.library.custom_op("clustr_fast::pairwise_sqdist_backward", mutates_args=())
def pairwise_sqdist_backward_op(grad: Tensor, x: Tensor, c: Tensor, precision: int) -> tuple[Tensor, Tensor]:
    gx, gc = run("pairwise_sqdist_backward", x.device, _BWD, grad, x, c, precision,
                 kernel="pairwise_sqdist_backward")
    return gx.to(x.dtype), gc.to(c.dtype)


@pairwise_sqdist_backward_op.register_fake
def _(grad, x, c, precision):
    return torch.empty_like(x), torch.empty_like(c)


def _setup_context(ctx, inputs, output):
    x, c, precision = inputs
    ctx.save_for_backward(x, c)
    ctx.precision = precision


def _backward(ctx, grad):
    x, c = ctx.saved_tensors
    gx, gc = pairwise_sqdist_backward_op(grad.contiguous(), x, c, ctx.precision)
    return gx, gc, None


pairwise_sqdist_op.register_autograd(_backward, setup_context=_setup_context)


def pairwise_sqdist(x: Tensor, c: Tensor, *, precision: str = "highest") -> Tensor:
    """Squared Euclidean distances ``[N,K]`` between the rows of ``x [N,d]`` and ``c [K,d]``.

    ``precision``: "highest" (float32-exact), "high" (TF32 products allowed on the
    GPU) or "medium" (bf16 products allowed). Differentiable in ``x`` and ``c``.
    """
    code = precision_code(precision)
    check_pairwise_sqdist(x, c)
    return pairwise_sqdist_op(x, c, code)
