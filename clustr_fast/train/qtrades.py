"""QTRADES: a one-step TRADES-style adversary for the Magnet phase (paper Eq. 5).

p(.) are the soft-cluster class probabilities (Eq. 4). Two choices of what p(.) is
measured against (``centers``):

- ``"batch"``: the batch's cluster means with the batch's sigma^2 (a constant), over the
  classes present in the batch; the centers carry gradients.
- ``"global"``: the last refresh's centers and the training-set sigma^2 (constants), over
  every class and the ``top_d`` nearest centers (None: all): the classifier's own p(.), as
  the official ClusTR code computes it (``get_softmax_probs`` on the refreshed centroids).

x' = x + U(-eps, eps); x_adv = Proj(x' + step * sign(grad_x' CE(p(x), p(x'))))
onto the eps ball around x (and [0, 1] for images); the term added to the loss
is CE(p(x), p(x_adv)) = -sum_c p_c(x) log p_c(x_adv), differentiable in both.
"""
from __future__ import annotations

import torch

import clustr_fast

from .config import QTRADES_CENTERS as CENTERS

# Floor of log p_c(x_adv) in the "global" term: with a top-D head a class among x's D nearest
# centers can be missing from x_adv's (log p = -inf); the term then counts it at this floor
# (p ~ 1e-13) instead of becoming infinite.
LOG_FLOOR = -30.0


def _soft_ce(target_logp, logp, floor=None):
    """Mean over rows of ``-sum_c exp(target_logp) * logp``; classes with zero target
    probability add nothing (also where ``logp`` is -inf, as with a top-D head).
    ``floor``: ``logp`` is read as at least this value (no gradient below it)."""
    p = target_logp.exp()
    if floor is not None:
        logp = logp.clamp_min(floor)
    terms = torch.where(p > 0, p * logp, torch.zeros_like(logp))
    return -terms.sum(1).mean()


def _project(x_adv, x, eps, images):
    x_adv = torch.maximum(torch.minimum(x_adv, x + eps), x - eps)
    return x_adv.clamp(0.0, 1.0) if images else x_adv


def adversary(net, x, target_logp, centers, classes, num_classes, variance, *, eps, step, generator,
              top_d=None, floor=None):
    """``x_adv`` (detached): one signed-gradient step from uniform noise in the eps ball.

    The network runs in eval mode here (batch-norm statistics are not updated by the attack).
    """
    images = x.dim() == 4
    was_training = net.training
    net.eval()
    try:
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
        x0 = _project(x + noise, x, eps, images).detach().requires_grad_(True)
        logp0 = clustr_fast.soft_cluster_logits(net(x0)[1], centers, classes, num_classes, variance=variance,
                                                top_d=top_d)
        grad, = torch.autograd.grad(_soft_ce(target_logp, logp0, floor), x0)
        return _project(x0.detach() + step * grad.sign(), x, eps, images).detach()
    finally:
        net.train(was_training)


def qtrades_term(net, x, feats, cluster_ids, cluster_classes, *, eps, step, generator, centers="batch",
                 clustering=None, num_classes=None, top_d=None):
    """CE(p(x), p(x_adv)) for a neighbourhood batch (``feats = net(x).features``, with grad).

    ``centers="global"`` needs ``clustering`` (the last refresh: ``centers``, ``center_classes``,
    ``variance``) and ``num_classes``; ``top_d`` is the number of nearest centers in p(.)."""
    if centers == "global":
        if clustering is None or num_classes is None:
            raise ValueError("qtrades_term: `centers`='global' needs `clustering` and `num_classes`")
        mu, classes, variance = clustering.centers.detach(), clustering.center_classes, clustering.variance
        variance = float(variance)
        logp = clustr_fast.soft_cluster_logits(feats, mu, classes, num_classes, variance=variance, top_d=top_d)
        x_adv = adversary(net, x, logp.detach(), mu, classes, num_classes, variance, eps=eps, step=step,
                          generator=generator, top_d=top_d, floor=LOG_FLOOR)
        logp_adv = clustr_fast.soft_cluster_logits(net(x_adv)[1], mu, classes, num_classes, variance=variance,
                                                   top_d=top_d)
        return _soft_ce(logp, logp_adv, LOG_FLOOR)
    if centers != "batch":
        raise ValueError(f"qtrades_term: `centers` must be one of {', '.join(CENTERS)}, got {centers!r}")
    present, local = torch.unique(cluster_classes, return_inverse=True)
    centers, _ = clustr_fast.cluster_means(feats, cluster_ids, cluster_classes.shape[0])
    variance = clustr_fast.cluster_variance(feats, centers, cluster_ids).detach()
    nc = present.numel()
    logp = clustr_fast.soft_cluster_logits(feats, centers, local, nc, variance=variance)
    x_adv = adversary(net, x, logp.detach(), centers.detach(), local, nc, variance,
                      eps=eps, step=step, generator=generator)
    logp_adv = clustr_fast.soft_cluster_logits(net(x_adv)[1], centers, local, nc, variance=variance)
    return _soft_ce(logp, logp_adv)
