"""``soft_cluster_logits`` / ``soft_cluster_predict``: the top-D soft nearest-cluster
classifier of ClusTR Eq. 4 as ops.

With ``d_ij = ||f_i - mu_j||^2``, ``s = 1 / (2 sigma^2)`` and ``S_i`` the ``top_d``
nearest centers of row i (ties: lower index),

    logit_ic = logsumexp_{j in S_i, class_j = c}(-s d_ij)        (-inf if no such j)
    out_ic   = logit_ic - logsumexp_{j in S_i}(-s d_ij)          (= log_softmax over classes)

Shapes: feats [N,d], centers [C,d], center_classes [C] -> out [N,L] (float32, float64
for float64 inputs). The fused kernels stream the distance tiles through a running
top-D selection (no [N,C] buffer), then recompute the D selected distances exactly
(direct differences in the accumulation dtype), so ``precision="high"`` only affects
which centers are selected, never the values. (Where the selection's products are
float32-exact, as the Triton forward's 3xTF32 under "highest" and "high", it keeps the
selection's distances instead: docs/decisions.md.)

Forward op returns ``(out, idx)``; ``idx [N,D]`` int64 holds the selected centers and
is all the backward saves besides its inputs. Any backend's backward accepts any backend's
``(out, idx)``, so ``auto`` picks the two passes separately (``_backend.TABLE``).
Backward (also a custom op), with
``p_j = exp(z_j - Z)``, ``w_j = exp(z_j - logit_{c_j})`` (within-class weight),
``G = sum of grad over present classes`` and ``a_j = -s (grad_{c_j} w_j - G p_j)``:

    grad_f_i  =  2 sum_{j in S_i} a_ij (f_i - mu_j)
    grad_mu_j = -2 sum_{i: j in S_i} a_ij (f_i - mu_j)

Gradient sent to a ``-inf`` (absent) class is dropped; variance is a constant.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend, reference
from .._validate import acc_dtype, check_soft_cluster_logits, int64_ids, precision_code
from ..reference.pairwise_sqdist import _sqdist
from ._library import define, triton_kernel


def _variance_value(variance) -> float:
    return float(variance.detach().item() if isinstance(variance, Tensor) else variance)


def _reference_fwd(feats, centers, classes, num_classes, variance, top_d, precision):
    out = reference.soft_cluster_logits(feats, centers, classes, num_classes, variance=variance, top_d=top_d)
    acc = acc_dtype(feats.dtype)
    d = _sqdist(feats.detach().to(acc), centers.detach().to(acc))
    idx = torch.sort(d, dim=1, stable=True).indices[:, :top_d].contiguous()
    return out, idx


def _reference_bwd(grad, out, idx, feats, centers, classes, variance):
    """Plain-PyTorch backward over the saved selection ``idx`` (the formula in the module docstring)."""
    acc = acc_dtype(feats.dtype)
    f = feats.detach().to(acc)
    mu = centers.detach().to(acc)
    diff = f[:, None, :] - mu[idx]  # [N, D, d]
    s = 1.0 / (2.0 * float(variance))
    z = -s * diff.square().sum(-1)  # [N, D]
    big_z = torch.logsumexp(z, dim=1, keepdim=True)
    cls = classes[idx]
    present = torch.isfinite(out)
    g = torch.where(present, grad.to(acc), torch.zeros((), dtype=acc, device=grad.device))
    logit_j = (torch.where(present, out, torch.zeros((), dtype=acc, device=out.device)) + big_z).gather(1, cls)
    # a selected center with z = -inf (its distance overflowed) carries no weight; a row whose
    # every z is -inf (big_z = -inf) has none at all, and no NaN from -inf - (-inf)
    live = torch.isfinite(z) & torch.isfinite(big_z)
    zero = torch.zeros((), dtype=acc, device=z.device)
    w = torch.where(live, torch.exp(z - logit_j), zero)  # weight of j within its class
    p = torch.where(live, torch.exp(z - big_z), zero)  # weight of j among all selected centers
    a = -s * (g.gather(1, cls) * w - g.sum(1, keepdim=True) * p)  # d loss / d d_ij
    gf = 2.0 * (a.unsqueeze(-1) * diff).sum(1)
    gc = torch.zeros_like(mu).index_add_(0, idx.reshape(-1), (-2.0 * a.unsqueeze(-1) * diff).reshape(-1, mu.shape[1]))
    return gf, gc


def _cast_grads(gf, gc, feats, centers):
    return gf.to(feats.dtype), gc.to(centers.dtype)


def _reference_backward(grad, out, idx, feats, centers, classes, variance):
    return _cast_grads(*_reference_bwd(grad, out, idx, feats, centers, classes, variance), feats, centers)


_triton_backward_kernel = triton_kernel("soft_cluster_logits", "soft_cluster_logits_backward")


def _triton_backward(grad, out, idx, feats, centers, classes, variance):
    return _cast_grads(*_triton_backward_kernel(grad, out, idx, feats, centers, classes, variance), feats, centers)


def _fake_fwd(feats, centers, center_classes, num_classes, variance, top_d, precision):
    torch._check(feats.dim() == 2 and centers.dim() == 2 and feats.shape[1] == centers.shape[1],
                 lambda: "soft_cluster_logits: feats [N,d] and centers [C,d] with the same d")
    torch._check(center_classes.shape[0] == centers.shape[0],
                 lambda: "soft_cluster_logits: center_classes must be [C]")
    torch._check(1 <= top_d <= centers.shape[0], lambda: "soft_cluster_logits: top_d must be in [1, C]")
    n = feats.shape[0]
    out = feats.new_empty((n, num_classes), dtype=acc_dtype(feats.dtype))
    return out, feats.new_empty((n, top_d), dtype=torch.int64)


def _fake_bwd(grad, out, idx, feats, centers, center_classes, variance):
    torch._check(grad.shape == out.shape, lambda: "soft_cluster_logits_backward: grad must have the shape of out")
    return torch.empty_like(feats), torch.empty_like(centers)


# Autograd (csrc/autograd.cpp) saves (out, idx, feats, centers, classes) and calls the backward op.
soft_cluster_logits_op = define(
    "soft_cluster_logits(Tensor feats, Tensor centers, Tensor center_classes, int num_classes, float variance, "
    "int top_d, int precision) -> (Tensor, Tensor)", _fake_fwd,
    reference=_reference_fwd, triton=("soft_cluster_logits", "soft_cluster_logits"))
soft_cluster_logits_backward_op = define(
    "soft_cluster_logits_backward(Tensor grad, Tensor out, Tensor idx, Tensor feats, Tensor centers, "
    "Tensor center_classes, float variance) -> (Tensor, Tensor)", _fake_bwd,
    reference=_reference_backward, triton=_triton_backward)


def soft_cluster_logits(feats: Tensor, centers: Tensor, center_classes: Tensor, num_classes: int, *,
                        variance, top_d: int | None = None, precision: str = "highest") -> Tensor:
    """Class log-probabilities ``[N, num_classes]`` over the ``top_d`` nearest centers (Eq. 4).

    ``feats [N,d]``, ``centers [C,d]``, ``center_classes [C]`` (ids in ``[0, num_classes)``),
    ``variance`` sigma^2 > 0 (float or 0-d tensor, a constant), ``top_d`` in ``[1, C]`` or
    None (all centers). A class with no selected center is ``-inf`` with zero gradient.
    ``precision``: "highest" selects with float32-exact distances; "high"/"medium" let the
    GPU select with TF32/bf16 products (the Triton kernels run "high" as 3xTF32), and the
    returned values then come from distances exact for the selected centers. Differentiable in
    ``feats`` and ``centers``.
    """
    code = precision_code(precision)
    if torch.compiler.is_compiling():  # the value checks read tensors back; they run in eager mode
        top_d = centers.shape[0] if top_d is None else int(top_d)
    else:
        top_d = check_soft_cluster_logits(feats, centers, center_classes, num_classes, variance, top_d)
    if not _backend.ops_available():
        return reference.soft_cluster_logits(feats, centers, center_classes, num_classes, variance=variance,
                                             top_d=top_d)
    _backend.refresh()
    out, _ = soft_cluster_logits_op(feats, centers, int64_ids(center_classes), int(num_classes),
                                    _variance_value(variance), top_d, code)
    return out


def soft_cluster_predict(feats: Tensor, centers: Tensor, center_classes: Tensor, num_classes: int, *,
                         variance, top_d: int | None = None, precision: str = "highest"):
    """``(labels int64 [N], probs [N, L])``: argmax and ``exp`` of :func:`soft_cluster_logits`."""
    logits = soft_cluster_logits(feats, centers, center_classes, num_classes, variance=variance,
                                 top_d=top_d, precision=precision)
    return logits.argmax(1), logits.exp()
