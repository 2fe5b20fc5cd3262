"""``magnet_loss`` and ``magnet_loss_batch`` as ops.

With ``s = 1 / (2 var)``, ``own_i = ||f_i - mu_{a_i}||^2``, ``d_ik = ||f_i - mu_k||^2``
and the impostors of row i the centers of another class (and, in the batch form,
with at least one sample)::

    A_i = -s own_i - alpha          L_i = logsumexp_{k impostor}(-s d_ik)   (-inf if none)
    eps > 0:  loss_i = relu(-logaddexp(A_i - logaddexp(L_i, log eps), log eps))
    eps = 0:  loss_i = relu(L_i - A_i)   (0 for a row without impostor)

Forward op ``clustr_fast::magnet_loss_fwd`` returns the per-row losses [N] and
per-row statistics ``stats [3, N] = (own, L, E)`` with ``E_i = sum_k w_ik d_ik``
(``w`` the softmax over impostors of ``-s d``). Backward op
``clustr_fast::magnet_loss_bwd`` recomputes the distances block by block; the
gradient of loss_i with respect to the distances is a matrix P with
``P_ik = -s gL_i w_ik`` on impostors and ``P_{i,a_i} = -s gA_i``, so

    grad_f = 2 (rowsum(P) f - P mu),   grad_mu = -2 (P^T f - colsum(P) mu),
    grad_var = -2 s^2 * sum_i -(gA_i own_i + gL_i E_i)

with ``gA, gL`` the derivatives of loss_i in A_i and L_i. P is formed for a
bounded block of rows at a time, never [N, C]. ``var`` is a 0-d tensor input;
``variance=None`` computes it with ``cluster_variance`` (analytic backward, see
:mod:`clustr_fast.ops.cluster_means`) so that its gradient reaches feats and centers.

Global form, fused (CPU backends, a gradient wanted, reduction mean/sum):
``clustr_fast::magnet_loss_fused`` computes the loss and its gradients in one pass
(the products f.mu become the logits and then P in place: 3 products instead of 4);
with ``var=None`` it computes the cluster variance itself and adds its gradient
``2 grad_var / (N - 1) * (f_i - mu_{a_i})`` to feats (and minus the per-center sums to centers).

Batch form, fused (``magnet_loss_batch`` when the batch fits one kernel call, see
``fused_batch_applies``): one kernel computes the cluster counts and means, sigma^2,
the per-row losses, ``total = sum_i w_i loss_i`` and, in the same call, its gradient
with respect to feats through the means and sigma^2 (the fused-loss pattern of
Liger-Kernel: the forward computes the gradient at once)::

    grad f_i = 2 (R_i f_i - sum_k P_ik mu_k) + gmu_{a_i} / n_{a_i} + cv (f_i - mu_{a_i})
    gmu_k = 2 (colsum(P)_k mu_k - sum_i P_ik f_i),   R_i = rowsum(P)_i
    cv = 2 grad_var / (N - 1)  (batch variance; 0 for a given one)

The op ``clustr_fast::magnet_loss_batch`` returns (losses [N], total, grad):

- reduction "mean"/"sum": the total with ``w_i = 1/N`` or 1 and its gradient; the backward
  only scales the saved gradient by grad_output (no second pass over the batch; not twice
  differentiable).
- reduction "none": the losses [N]; the backward runs the same fused kernel once more with
  ``w = grad_output`` (the vector-Jacobian product, recomputed from the inputs in one call
  instead of saving [M, d] and [N, M] statistics).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _backend, reference
from .._validate import HIGHEST, acc_dtype, check_magnet_loss, check_magnet_loss_batch, variance_tensor
from ..reference.cluster_means import _cluster_means, _cluster_variance
from .cluster_means import cluster_variance_core
from .kmeans import kmeans_assign_op
from ..reference.pairwise_sqdist import _sqdist
from ._library import define, triton_kernel



# --------------------------------------------------------------------------- reference backend


def reference_rows(f, mu, assign, classes, valid, var, alpha, eps):
    """Plain-PyTorch per-row losses [N] and stats [3, N] (own, L, E); f, mu, var in one float dtype."""
    s = 0.5 / var
    a = assign.long()
    diff = f - mu[a]
    own = (diff * diff).sum(1)
    d = _sqdist(f, mu)
    imp = classes[None, :] != classes[a][:, None]
    if valid is not None:
        imp = imp & valid[None, :]
    has = imp.any(1)
    z = (-s * d).masked_fill(~imp, float("-inf"))
    z = torch.where(has[:, None], z, torch.zeros_like(z))
    lse = torch.logsumexp(z, dim=1)
    expected = torch.where(has, (torch.softmax(z, dim=1) * d).sum(1), torch.zeros_like(lse))
    loss = row_loss(-s * own - float(alpha), lse, has, eps)
    stats = torch.stack([own, torch.where(has, lse, torch.full_like(lse, float("-inf"))), expected])
    return loss, stats


def row_loss(a, lse, has, eps):
    """loss_i from A_i and L_i (``lse`` finite on rows without impostor, masked by ``has``)."""
    if eps > 0:
        log_eps = math.log(eps)
        b = torch.where(has, torch.logaddexp(lse, torch.full_like(lse, log_eps)), torch.full_like(lse, log_eps))
        return torch.relu(-torch.logaddexp(a - b, torch.full_like(a, log_eps)))
    return torch.where(has, torch.relu(lse - a), torch.zeros_like(a))


def row_coefficients(grad, loss, stats, s, alpha, eps):
    """(gA, gL): d(grad . loss) / dA_i and / dL_i, from O(N) saved statistics."""
    own, lse = stats[0], stats[1]
    has = torch.isfinite(lse)
    gate = grad * (loss > 0).to(grad.dtype)
    if eps > 0:
        log_eps = math.log(eps)
        lse0 = torch.where(has, lse, torch.zeros_like(lse))
        b = torch.where(has, torch.logaddexp(lse0, torch.full_like(lse0, log_eps)), torch.full_like(lse0, log_eps))
        sig = torch.sigmoid(-s * own - alpha - b - log_eps)
        tau = torch.where(has, torch.sigmoid(lse0 - log_eps), torch.zeros_like(lse0))
        return -gate * sig, gate * sig * tau
    h = has.to(grad.dtype)
    return -gate * h, gate * h


def _reference_fwd(feats, centers, assign, classes, valid, var, alpha, eps):
    acc = acc_dtype(feats.dtype)
    return reference_rows(feats.to(acc), centers.to(acc), assign, classes, valid, var.to(acc), alpha, eps)


def _reference_bwd(grad, feats, centers, assign, classes, valid, var, loss, stats, alpha, eps):
    """Plain-PyTorch backward with the full [N, C] matrix P (see the module docstring)."""
    acc = acc_dtype(feats.dtype)
    f, mu, v = feats.to(acc), centers.to(acc), var.to(acc)
    s = 0.5 / v
    g_a, g_l = row_coefficients(grad.to(acc), loss.to(acc), stats.to(acc), s, float(alpha), float(eps))
    a = assign.long()
    imp = classes[None, :] != classes[a][:, None]
    if valid is not None:
        imp = imp & valid[None, :]
    lse = stats[1].to(acc)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    z = torch.where(imp, -s * _sqdist(f, mu) - lse[:, None], torch.full_like(imp, float("-inf"), dtype=acc))
    p = (-s * g_l)[:, None] * torch.exp(z)
    p = p.index_put((torch.arange(f.shape[0], device=f.device), a), -s * g_a, accumulate=True)
    grad_f = 2.0 * (p.sum(1, keepdim=True) * f - p @ mu)
    grad_mu = -2.0 * (p.t() @ f - p.sum(0)[:, None] * mu)
    grad_var = 2.0 * s * s * (g_a * stats[0].to(acc) + g_l * stats[2].to(acc)).sum()
    return grad_f, grad_mu, grad_var


def _reference_backward(grad, feats, centers, assign, classes, valid, var, loss, stats, alpha, eps):
    gf, gc, gv = _reference_bwd(grad, feats, centers, assign, classes, valid, var, loss, stats, alpha, eps)
    return _cast_grads(gf, gc, gv, feats, centers, var)


_triton_backward_kernel = triton_kernel("magnet_loss", "magnet_loss_bwd")


def _triton_backward(grad, feats, centers, assign, classes, valid, var, loss, stats, alpha, eps):
    acc = acc_dtype(feats.dtype)
    s = 0.5 / var.to(acc).reshape(())
    g_a, g_l = row_coefficients(grad.to(acc), loss, stats, s, float(alpha), float(eps))
    gf, gc, gv = _triton_backward_kernel(g_a, g_l, feats, centers, assign, classes, valid, var, stats)
    return _cast_grads(gf, gc, gv, feats, centers, var)


def _cast_grads(gf, gc, gv, feats, centers, var):
    return gf.to(feats.dtype), gc.to(centers.dtype), gv.to(var.dtype).reshape(var.shape)


def _check_global(feats, centers, assign, classes, op):
    torch._check(feats.dim() == 2 and centers.dim() == 2 and feats.shape[1] == centers.shape[1],
                 lambda: f"{op}: feats [N,d] and centers [C,d] with the same d")
    torch._check(assign.shape[0] == feats.shape[0], lambda: f"{op}: assign must be [N]")
    torch._check(classes.shape[0] == centers.shape[0], lambda: f"{op}: classes must be [C]")


def _fake_fwd(feats, centers, assign, classes, valid, var, alpha, eps):
    _check_global(feats, centers, assign, classes, "magnet_loss_fwd")
    acc = acc_dtype(feats.dtype)
    n = feats.shape[0]
    return feats.new_empty((n,), dtype=acc), feats.new_empty((3, n), dtype=acc)


def _fake_bwd(grad, feats, centers, assign, classes, valid, var, loss, stats, alpha, eps):
    _check_global(feats, centers, assign, classes, "magnet_loss_bwd")
    return torch.empty_like(feats), torch.empty_like(centers), torch.empty_like(var)


# Per-row losses [N] and stats [3, N] = (own, L (-inf if no impostor), E) in the accumulation dtype;
# valid [C] (optional) removes centers from every impostor set; var is a 0-d tensor (sigma^2).
magnet_loss_fwd_op = define(
    "magnet_loss_fwd(Tensor feats, Tensor centers, Tensor assign, Tensor classes, Tensor? valid, Tensor var, "
    "float alpha, float eps) -> (Tensor, Tensor)", _fake_fwd,
    reference=_reference_fwd, triton=("magnet_loss", "magnet_loss_fwd"))
# (grad_feats, grad_centers, grad_var) for the gradient [N] of the per-row losses (autograd:
# csrc/autograd.cpp saves the inputs, loss and stats).
magnet_loss_bwd_op = define(
    "magnet_loss_bwd(Tensor grad, Tensor feats, Tensor centers, Tensor assign, Tensor classes, Tensor? valid, "
    "Tensor var, Tensor loss, Tensor stats, float alpha, float eps) -> (Tensor, Tensor, Tensor)", _fake_bwd,
    reference=_reference_backward, triton=_triton_backward)


# --------------------------------------------------------------------------- global form, fused (CPU)


def _reference_fused(feats, centers, assign, classes, valid, var, alpha, eps, weight):
    acc = acc_dtype(feats.dtype)
    f, mu, a = feats.to(acc), centers.to(acc), assign.long()
    own_var = var is None
    if own_var:  # sigma^2 = cluster variance; its gradient is folded into feats and centers below
        var = _cluster_variance(f, mu, a)
    loss, stats = _reference_fwd(feats, centers, assign, classes, valid, var, alpha, eps)
    gf, gc, gv = _reference_bwd(torch.full_like(loss, weight), feats, centers, assign, classes, valid, var, loss,
                                stats, alpha, eps)
    if own_var:
        k = 2.0 * gv / (f.shape[0] - 1)
        diff = f - mu[a]
        gf = gf + k * diff
        gc = gc - k * torch.zeros_like(mu).index_add_(0, a, diff)
        gv = torch.zeros_like(gv)
    return (loss.to(torch.float64).sum() * weight).to(loss.dtype), gf, gc, gv



def _fused_outputs(total, gf, gc, gv, feats, centers, var):
    acc = acc_dtype(feats.dtype)
    gv = gv.to(acc).reshape(()) if var is None else gv.to(var.dtype).reshape(var.shape)
    return total.to(acc).reshape(()), gf.to(feats.dtype), gc.to(centers.dtype), gv


def _reference_fused_kernel(feats, centers, assign, classes, valid, var, alpha, eps, weight):
    return _fused_outputs(*_reference_fused(feats, centers, assign, classes, valid, var, alpha, eps, weight),
                          feats, centers, var)


def _fake_fused(feats, centers, assign, classes, valid, var, alpha, eps, weight):
    _check_global(feats, centers, assign, classes, "magnet_loss_fused")
    acc = acc_dtype(feats.dtype)
    gv = feats.new_empty((), dtype=acc) if var is None else torch.empty_like(var)
    return feats.new_empty((), dtype=acc), torch.empty_like(feats), torch.empty_like(centers), gv


# (total = weight * sum_i loss_i as a 0-d tensor, and its gradients in feats, centers and var) in one
# pass: each block's products f.mu give the row losses and, at once, the matrix P of the gradient
# (one product less than forward + backward). Autograd (csrc/autograd.cpp) scales the saved gradients
# by grad_output (not twice differentiable). var=None: sigma^2 is cluster_variance(feats, centers,
# assign), computed in the same call, and its gradient is folded into those of feats and centers.
magnet_loss_fused_op = define(
    "magnet_loss_fused(Tensor feats, Tensor centers, Tensor assign, Tensor classes, Tensor? valid, Tensor? var, "
    "float alpha, float eps, float weight) -> (Tensor, Tensor, Tensor, Tensor)", _fake_fused,
    reference=_reference_fused_kernel)


def fused_global_applies(feats: Tensor, centers: Tensor, var: Tensor | None, reduction: str) -> bool:
    """The global form runs as :func:`magnet_loss_fused_op` (forward with its gradient) when a gradient
    is wanted of a reduced loss and the op runs on the device (``_backend.TABLE``: the CPU backends;
    the GPU backends run forward, then backward)."""
    var_grad = var is not None and var.requires_grad
    wants_grad = torch.is_grad_enabled() and (feats.requires_grad or centers.requires_grad or var_grad)
    return reduction != "none" and wants_grad and _backend.runs("magnet_loss_fused", feats.device)


# --------------------------------------------------------------------------- batch form, fused

def fused_batch_applies(feats: Tensor, m: int) -> bool:
    """True when ``magnet_loss_batch`` on ``feats`` with ``m`` clusters runs as one fused call."""
    n, d = feats.shape
    dev = feats.device.type
    return _backend.fused_batch_fits(_backend.chosen("magnet_loss_batch", dev), dev, n, m, d, acc_dtype(feats.dtype))


def _reference_batch(feats, ids, classes, variance, variance_value, alpha, eps, row_weight, weight, with_grad):
    """Plain PyTorch: (losses [N], total = sum_i w_i loss_i, d total / d feats or [0, d]).

    The global-form reference (``_reference_fwd``/``_reference_bwd``) on the batch means,
    chained by hand through the means (``gmu_k / n_k``) and the batch variance
    (``grad_var * 2 (f_i - mu_{a_i}) / (N - 1)``).
    """
    acc = acc_dtype(feats.dtype)
    f = feats.to(acc)
    n = f.shape[0]
    mu, counts = _cluster_means(f, ids, classes.shape[0])
    valid = counts > 0
    if variance is not None:
        var = variance.to(device=f.device, dtype=acc).reshape(())
    elif variance_value > 0:
        var = torch.tensor(variance_value, device=f.device, dtype=acc)
    else:
        var = _cluster_variance(f, mu, ids)
    loss, stats = _reference_fwd(f, mu, ids, classes, valid, var, alpha, eps)
    w = row_weight.to(acc) if row_weight is not None else torch.full_like(loss, weight)
    total = (w * loss).sum()
    if not with_grad:
        return loss, total, feats.new_empty((0, feats.shape[1]))
    grad_f, grad_mu, grad_var = _reference_bwd(w, f, mu, ids, classes, valid, var, loss, stats, alpha, eps)
    a = ids.long()
    grad = grad_f + (grad_mu / counts.clamp_min(1).to(acc)[:, None])[a]
    if variance is None and not variance_value > 0:
        grad = grad + (2.0 / (n - 1)) * grad_var * (f - mu[a])
    return loss, total, grad.to(feats.dtype)


def _fake_batch(feats, ids, classes, variance, variance_value, alpha, eps, row_weight, weight, with_grad):
    torch._check(feats.dim() == 2, lambda: "magnet_loss_batch: feats must be [N, d]")
    torch._check(ids.shape[0] == feats.shape[0], lambda: "magnet_loss_batch: ids must be [N]")
    acc = acc_dtype(feats.dtype)
    n, d = feats.shape
    return (feats.new_empty((n,), dtype=acc), feats.new_empty((), dtype=acc),
            feats.new_empty((n if with_grad else 0, d)))


# Batch form, fused: means of the batch clusters, sigma^2 (variance tensor, else variance_value > 0,
# else the batch variance), per-row losses [N], total = sum_i w_i loss_i (w = row_weight, else
# weight) and, with with_grad, d total / d feats [N, d] (else [0, d]), through means and sigma^2.
# Autograd (csrc/autograd.cpp): the saved gradient times grad(total) when only the total has a
# gradient; otherwise the op once more with row weights grad(losses) + grad(total) w.
magnet_loss_batch_op = define(
    "magnet_loss_batch(Tensor feats, Tensor ids, Tensor classes, Tensor? variance, float variance_value, "
    "float alpha, float eps, Tensor? row_weight, float weight, bool with_grad) -> (Tensor, Tensor, Tensor)",
    _fake_batch, reference=_reference_batch, triton=("magnet_loss_batch", "magnet_loss_batch"))


def _fused_variance(variance, feats):
    """(variance tensor or None, variance value): a Python number travels as a float argument."""
    if variance is None:
        return None, 0.0
    if isinstance(variance, torch.Tensor):
        return variance.detach().to(device=feats.device, dtype=acc_dtype(feats.dtype)).reshape(()), 0.0
    return None, float(variance)


def _magnet_loss_batch_fused(feats, cluster_ids, cluster_classes, alpha, variance, eps, reduction):
    var_t, var_v = _fused_variance(variance, feats)
    args = (feats, cluster_ids, cluster_classes, var_t, var_v, float(alpha), float(eps))
    if reduction == "none" or not (torch.is_grad_enabled() and feats.requires_grad):
        losses = magnet_loss_batch_op(*args, row_weight=None, weight=1.0, with_grad=False)[0]
        return _reduce(losses, reduction)
    weight = 1.0 / max(feats.shape[0], 1) if reduction == "mean" else 1.0
    return magnet_loss_batch_op(*args, row_weight=None, weight=weight, with_grad=True)[1]


# --------------------------------------------------------------------------- public functions


def _batch_means(f, ids, m):
    """(means [M, d], counts [M]) of ``f`` by ``ids``, with static shapes (no bincount)."""
    ids = ids.long()
    sums = f.new_zeros(m, f.shape[1]).index_add(0, ids, f)
    counts = f.new_zeros(m).index_add_(0, ids, torch.ones_like(ids, dtype=f.dtype))
    return sums / counts.clamp_min(1)[:, None], counts


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def magnet_loss(feats, centers, assign=None, center_classes=None, *, alpha=1.0, variance=None,
                eps=1e-8, reduction="mean"):
    """Magnet loss of ``feats`` [N, d] against ``centers`` [C, d] (see the module docstring).

    ``assign`` [N] in [0, C); ``center_classes`` [C]. ``variance=None``: sigma^2 is
    ``cluster_variance(feats, centers, assign)`` and gradients flow through it; a given
    variance is a constant. ``reduction``: "mean", "sum" or "none" ([N]).
    Returns the accumulation dtype; differentiable in ``feats`` and ``centers``.
    Under ``torch.compile`` the input checks (which read id values back) are skipped.

    Defaults: ``assign=None`` puts each row with its nearest center,
    ``a_i = argmin_k d_ik`` (:func:`clustr_fast.kmeans_assign`, ties to the lower index; no
    gradient through the choice), so ``own_i = min_k d_ik``; ``center_classes=None`` makes
    every center its own class, so the impostors of row i are all ``k != a_i``. With both::

        loss_i = relu(-log(exp(-s min_k d_ik - alpha) / (sum_{k != a_i} exp(-s d_ik) + eps) + eps))
        s = 1 / (2 sigma^2),   sigma^2 = sum_i min_k d_ik / (N - 1)   (variance=None)
    """
    if not torch.compiler.is_compiling():  # the id-range checks read values back
        check_magnet_loss(feats, centers, assign, center_classes, alpha, variance, eps, reduction)
    _backend.refresh()
    if assign is None:
        assign = kmeans_assign_op(feats.detach(), centers.detach(), precision=HIGHEST, groups=None, group_k=0)[0]
    if center_classes is None:
        center_classes = torch.arange(centers.shape[0], device=centers.device)
    if not _backend.ops_available():
        return reference.magnet_loss(feats, centers, assign, center_classes, alpha=alpha, variance=variance, eps=eps,
                                     reduction=reduction)
    acc = acc_dtype(feats.dtype)
    weight = 1.0 / max(feats.shape[0], 1) if reduction == "mean" else 1.0
    if variance is None and fused_global_applies(feats, centers, None, reduction):
        return magnet_loss_fused_op(feats, centers, assign, center_classes, valid=None, var=None, alpha=float(alpha),
                                    eps=float(eps), weight=weight)[0]
    if variance is None:
        var = cluster_variance_core(feats.to(acc), centers.to(acc), assign)
    else:
        var = variance_tensor(variance, feats.to(acc))
    if fused_global_applies(feats, centers, var, reduction):
        return magnet_loss_fused_op(feats, centers, assign, center_classes, valid=None, var=var, alpha=float(alpha),
                                    eps=float(eps), weight=weight)[0]
    loss, _ = magnet_loss_fwd_op(feats, centers, assign, center_classes, valid=None, var=var, alpha=float(alpha),
                                 eps=float(eps))
    return _reduce(loss, reduction)


def magnet_loss_batch(feats, cluster_ids, cluster_classes, *, alpha=1.0, variance=None,
                      eps=1e-8, reduction="mean"):
    """Stochastic Magnet loss: centers are the batch means of each cluster.

    ``centers = cluster_means(feats, cluster_ids, M)`` with ``M = len(cluster_classes)``
    (gradients flow through the means and, with ``variance=None``, through sigma^2);
    a cluster without samples in the batch is no impostor of anyone. Runs as one fused
    call (forward and gradient together) when ``fused_batch_applies``; otherwise as the
    global form on the batch means.
    """
    if not torch.compiler.is_compiling():
        check_magnet_loss_batch(feats, cluster_ids, cluster_classes, alpha, variance, eps, reduction)
    if not _backend.ops_available():
        return reference.magnet_loss_batch(feats, cluster_ids, cluster_classes, alpha=alpha, variance=variance,
                                           eps=eps, reduction=reduction)
    if fused_batch_applies(feats, cluster_classes.shape[0]):  # reads the backend choice (_backend.chosen refreshes it)
        return _magnet_loss_batch_fused(feats, cluster_ids, cluster_classes, alpha, variance, eps, reduction)
    f = feats.to(acc_dtype(feats.dtype))
    mu, counts = _batch_means(f, cluster_ids, cluster_classes.shape[0])
    if variance is None:
        var = cluster_variance_core(f, mu, cluster_ids)
    else:
        var = variance_tensor(variance, f)
    loss, _ = magnet_loss_fwd_op(f, mu, cluster_ids, cluster_classes, valid=counts > 0, var=var, alpha=float(alpha),
                                 eps=float(eps))
    return _reduce(loss, reduction)
