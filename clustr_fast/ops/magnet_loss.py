"""``magnet_loss`` and ``magnet_loss_batch`` as custom ops.

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
``variance=None`` computes it with plain-PyTorch ``cluster_variance`` so that
autograd carries its gradient back to feats and centers.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import acc_dtype, check_magnet_loss, check_magnet_loss_batch
from ..reference.cluster_means import _cluster_variance
from ..reference.pairwise_sqdist import _sqdist
from ._dispatch import extension_kernel, run, triton_kernel

_OP = "magnet_loss"


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


_FWD = {
    "reference": _reference_fwd,
    "cpu": extension_kernel("magnet_loss_fwd"),
    "cuda": extension_kernel("magnet_loss_fwd"),
    "triton": triton_kernel("magnet_loss", "magnet_loss_fwd"),
}
_BWD = {
    "reference": _reference_bwd,
    "cpu": extension_kernel("magnet_loss_bwd"),
    "cuda": extension_kernel("magnet_loss_bwd"),
    "triton": triton_kernel("magnet_loss", "magnet_loss_bwd"),
}


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("clustr_fast::magnet_loss_fwd", mutates_args=())
def magnet_loss_fwd_op(feats: Tensor, centers: Tensor, assign: Tensor, classes: Tensor,
                       valid: Tensor | None, var: Tensor, alpha: float, eps: float) -> tuple[Tensor, Tensor]:
    """Per-row Magnet losses [N] and stats [3, N] = (own, L, E) in the accumulation dtype."""
    return run(_OP, feats.device, _FWD, feats, centers, assign, classes, valid, var, alpha, eps,
               kernel="magnet_loss_fwd")


@magnet_loss_fwd_op.register_fake
def _(feats, centers, assign, classes, valid, var, alpha, eps):
    acc = acc_dtype(feats.dtype)
    n = feats.shape[0]
    return feats.new_empty((n,), dtype=acc), feats.new_empty((3, n), dtype=acc)


@torch.library.custom_op("clustr_fast::magnet_loss_bwd", mutates_args=())
def magnet_loss_bwd_op(grad: Tensor, feats: Tensor, centers: Tensor, assign: Tensor, classes: Tensor,
                       valid: Tensor | None, var: Tensor, loss: Tensor, stats: Tensor,
                       alpha: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_feats, grad_centers, grad_var) for the per-row loss gradient ``grad`` [N]."""
    gf, gc, gv = run(_OP, feats.device, _BWD, grad, feats, centers, assign, classes, valid, var,
                     loss, stats, alpha, eps, kernel="magnet_loss_bwd")
    return gf.to(feats.dtype), gc.to(centers.dtype), gv.to(var.dtype).reshape(var.shape)


@magnet_loss_bwd_op.register_fake
def _(grad, feats, centers, assign, classes, valid, var, loss, stats, alpha, eps):
    return torch.empty_like(feats), torch.empty_like(centers), torch.empty_like(var)


def _setup_context(ctx, inputs, output):
    feats, centers, assign, classes, valid, var, alpha, eps = inputs
    loss, stats = output
    ctx.save_for_backward(feats, centers, assign, classes, valid, var, loss, stats)
    ctx.alpha, ctx.eps = alpha, eps


def _backward(ctx, grad_loss, grad_stats):
    feats, centers, assign, classes, valid, var, loss, stats = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = torch.zeros_like(loss)
    gf, gc, gv = magnet_loss_bwd_op(grad_loss.contiguous(), feats, centers, assign, classes, valid, var,
                                    loss, stats, ctx.alpha, ctx.eps)
    return gf, gc, None, None, None, gv, None, None


magnet_loss_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public functions


def _variance_tensor(variance, like):
    if isinstance(variance, torch.Tensor):
        return variance.detach().to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(variance), device=like.device, dtype=like.dtype)


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


def magnet_loss(feats, centers, assign, center_classes, *, alpha=1.0, variance=None,
                eps=1e-8, reduction="mean"):
    """Magnet loss of ``feats`` [N, d] against ``centers`` [C, d] (see the module docstring).

    ``assign`` [N] in [0, C); ``center_classes`` [C]. ``variance=None``: sigma^2 is
    ``cluster_variance(feats, centers, assign)`` and gradients flow through it; a given
    variance is a constant. ``reduction``: "mean", "sum" or "none" ([N]).
    Returns the accumulation dtype; differentiable in ``feats`` and ``centers``.
    Under ``torch.compile`` the input checks (which read id values back) are skipped.
    """
    if not torch.compiler.is_compiling():  # the id-range checks read values back
        check_magnet_loss(feats, centers, assign, center_classes, alpha, variance, eps, reduction)
    acc = acc_dtype(feats.dtype)
    if variance is None:
        var = _cluster_variance(feats.to(acc), centers.to(acc), assign)
    else:
        var = _variance_tensor(variance, feats.to(acc))
    loss, _ = magnet_loss_fwd_op(feats, centers, assign, center_classes, None, var,
                                 float(alpha), float(eps))
    return _reduce(loss, reduction)


def magnet_loss_batch(feats, cluster_ids, cluster_classes, *, alpha=1.0, variance=None,
                      eps=1e-8, reduction="mean"):
    """Stochastic Magnet loss: centers are the batch means of each cluster.

    ``centers = cluster_means(feats, cluster_ids, M)`` with ``M = len(cluster_classes)``
    (gradients flow through the means and, with ``variance=None``, through sigma^2);
    a cluster without samples in the batch is no impostor of anyone.
    """
    if not torch.compiler.is_compiling():
        check_magnet_loss_batch(feats, cluster_ids, cluster_classes, alpha, variance, eps, reduction)
    f = feats.to(acc_dtype(feats.dtype))
    mu, counts = _batch_means(f, cluster_ids, cluster_classes.shape[0])
    if variance is None:
        var = _cluster_variance(f, mu, cluster_ids)
    else:
        var = _variance_tensor(variance, f)
    loss, _ = magnet_loss_fwd_op(f, mu, cluster_ids, cluster_classes, counts > 0, var,
                                 float(alpha), float(eps))
    return _reduce(loss, reduction)
