"""``pairwise_sqdist``: squared Euclidean distances between rows, as an op.

    out[i,k] = max(||x_i||^2 + ||c_k||^2 - 2 x_i.c_k, 0)      x [N,d], c [K,d] -> [N,K]

Accumulated in float32 (float64 for float64 inputs); the result has that dtype.
Backward (op ``pairwise_sqdist_backward``): grad_x = 2 (rowsum(g) x - g c),
grad_c = 2 (colsum(g) c - g^T x), in the inputs' dtypes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend
from .. import reference
from .._validate import acc_dtype, check_pairwise_sqdist, precision_code, precision_name
from ._library import define, triton_kernel


def _reference_fwd(x, c, precision):
    return reference.pairwise_sqdist(x, c, precision=precision_name(precision))


def _reference_bwd(grad, x, c, precision):
    """Plain-PyTorch backward: grad_x = 2 (rowsum(g) x - g c), grad_c = 2 (colsum(g) c - g^T x)."""
    acc = acc_dtype(x.dtype)
    g, xa, ca = grad.to(acc), x.to(acc), c.to(acc)
    gx = 2.0 * (g.sum(1, keepdim=True) * xa - g @ ca)
    gc = 2.0 * (g.sum(0).unsqueeze(1) * ca - g.t() @ xa)
    return gx.to(x.dtype), gc.to(c.dtype)


_triton_backward_kernel = triton_kernel("pairwise_sqdist", "pairwise_sqdist_backward")


def _triton_bwd(grad, x, c, precision):
    gx, gc = _triton_backward_kernel(grad, x, c, precision)
    return gx.to(x.dtype), gc.to(c.dtype)


def _fake_fwd(x, c, precision):
    torch._check(x.dim() == 2 and c.dim() == 2 and x.shape[1] == c.shape[1],
                 lambda: f"pairwise_sqdist: x [N,d] and c [K,d] with the same d, got {tuple(x.shape)}, {tuple(c.shape)}")
    return x.new_empty((x.shape[0], c.shape[0]), dtype=acc_dtype(x.dtype))


def _fake_bwd(grad, x, c, precision):
    torch._check(grad.shape[0] == x.shape[0] and grad.shape[1] == c.shape[0],
                 lambda: "pairwise_sqdist_backward: grad must be [N, K]")
    return torch.empty_like(x), torch.empty_like(c)


pairwise_sqdist_op = define("pairwise_sqdist(Tensor x, Tensor c, int precision) -> Tensor", _fake_fwd,
                            reference=_reference_fwd, triton=("pairwise_sqdist", "pairwise_sqdist"))
pairwise_sqdist_backward_op = define(
    "pairwise_sqdist_backward(Tensor grad, Tensor x, Tensor c, int precision) -> (Tensor, Tensor)", _fake_bwd,
    reference=_reference_bwd, triton=_triton_bwd)


def pairwise_sqdist(x: Tensor, c: Tensor, *, precision: str = "highest") -> Tensor:
    """Squared Euclidean distances ``[N,K]`` between the rows of ``x [N,d]`` and ``c [K,d]``.

    ``precision``: "highest" (float32-exact), "high" (TF32 products allowed on the
    GPU) or "medium" (bf16 products allowed). Differentiable in ``x`` and ``c``.
    """
    code = precision_code(precision)
    check_pairwise_sqdist(x, c)
    if not _backend.ops_available():
        return reference.pairwise_sqdist(x, c, precision=precision)
    _backend.refresh()
    return pairwise_sqdist_op(x, c, code)
