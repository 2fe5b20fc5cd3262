"""QTRADES: a one-step TRADES-style adversary for the Magnet phase (paper Eq. 5).

p(.) are the soft-cluster class probabilities (Eq. 4) against the batch's
cluster means with the batch's sigma^2 (a constant), over the classes present
in the batch. x' = x + U(-eps, eps); x_adv = Proj(x' + step * sign(grad_x' CE(p(x), p(x'))))
onto the eps ball around x (and [0, 1] for images); the term added to the loss
is CE(p(x), p(x_adv)) = -sum_c p_c(x) log p_c(x_adv), differentiable in both.
"""
from __future__ import annotations

import torch

import clustr_fast


def _soft_ce(target_logp, logp):
    """Mean over rows of ``-sum_c exp(target_logp) * logp``; classes with zero target
    probability add nothing (also where ``logp`` is -inf, as with a top-D head)."""
    p = target_logp.exp()
    terms = torch.where(p > 0, p * logp, torch.zeros_like(logp))
    return -terms.sum(1).mean()


def _project(x_adv, x, eps, images):
    x_adv = torch.maximum(torch.minimum(x_adv, x + eps), x - eps)
    return x_adv.clamp(0.0, 1.0) if images else x_adv


def adversary(net, x, target_logp, centers, classes, num_classes, variance, *, eps, step, generator):
    """``x_adv`` (detached): one signed-gradient step from uniform noise in the eps ball.

    The network runs in eval mode here (batch-norm statistics are not updated by the attack).
    """
    images = x.dim() == 4
    was_training = net.training
    net.eval()
    try:
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
        x0 = _project(x + noise, x, eps, images).detach().requires_grad_(True)
        logp0 = clustr_fast.soft_cluster_logits(net(x0)[1], centers, classes, num_classes, variance=variance)
        grad, = torch.autograd.grad(_soft_ce(target_logp, logp0), x0)
        return _project(x0.detach() + step * grad.sign(), x, eps, images).detach()
    finally:
        net.train(was_training)


def qtrades_term(net, x, feats, cluster_ids, cluster_classes, *, eps, step, generator):
    """CE(p(x), p(x_adv)) for a neighbourhood batch (``feats = net(x).features``, with grad)."""
    present, local = torch.unique(cluster_classes, return_inverse=True)
    centers, _ = clustr_fast.cluster_means(feats, cluster_ids, cluster_classes.shape[0])
    variance = clustr_fast.cluster_variance(feats, centers, cluster_ids).detach()
    nc = present.numel()
    logp = clustr_fast.soft_cluster_logits(feats, centers, local, nc, variance=variance)
    x_adv = adversary(net, x, logp.detach(), centers.detach(), local, nc, variance,
                      eps=eps, step=step, generator=generator)
    logp_adv = clustr_fast.soft_cluster_logits(net(x_adv)[1], centers, local, nc, variance=variance)
    return _soft_ce(logp, logp_adv)
