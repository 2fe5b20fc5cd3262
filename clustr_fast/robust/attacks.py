"""Projected gradient attacks (L-inf and L2 PGD with restarts) and their losses.

The model is any ``nn.Module`` whose ``forward(x) -> [N, L]`` returns class
log-probabilities (a ``ClusterClassifier``: the log-space logits of
``soft_cluster_logits``). ``-inf`` entries (classes with no center among the
top-D) are floored at ``LOG_FLOOR`` with zero gradient, so no loss sees ``inf - inf``.

Attacks are registered in ``ATTACKS`` (name -> :class:`AttackSpec`: the PGD loss it maximises,
what it reads, its table label); adding one is one ``register_attack`` call in this file.

Losses (per sample, maximised by the attack):

- ``"ce"``: cross-entropy ``-log p_y`` on the log-space logits;
- ``"margin"``: DLR (Croce & Hein 2020) ``-(z_y - max_{c!=y} z_c) / (z_(1) - z_(3))``
  with sorted logits ``z_(1) >= z_(2) >= ...``; with two classes the plain margin
  ``max_{c!=y} z_c - z_y``;
- ``"magnet"``: the adaptive attack of the paper, the Magnet loss of the perturbed
  feature against the model's fixed centers (own cluster: nearest center of class
  ``y``), in its pure log-space form (``eps=0``) and with ``alpha=MAGNET_ATTACK_ALPHA``,
  a shift large enough that the hinge never cuts the gradient;
- ``"official-loss"``: cross-entropy on the raw class probabilities used as
  logits (what the ClusTR reference code attacked), for a cluster model computed
  as that code did, in linear space (``official_cluster_loss``); otherwise
  ``p = exp(z)``. A *diagnostic of gradient masking only*, never a robustness number.

PGD: ``x_0 = x + U(-eps, eps)`` (L-inf) or a uniform point of the L2 ball, then
``x_{t+1} = Proj(x_t + eta sign(grad))`` (L-inf) or ``Proj(x_t + eta grad/||grad||)``
(L2), projected on the eps ball and the box ``clip``. Every iterate of every
restart is checked: a sample counts as broken as soon as one iterate is
misclassified, and that iterate is kept. Later restarts attack only the
samples still standing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

import clustr_fast

LOG_FLOOR = -1e4
MAGNET_ATTACK_ALPHA = 1e4
NORMS = ("linf", "l2")


def finite_logits(logp: torch.Tensor) -> torch.Tensor:
    """``logp`` with ``-inf`` replaced by ``LOG_FLOOR`` (zero gradient there)."""
    return torch.where(torch.isneginf(logp), torch.full_like(logp, LOG_FLOOR), logp)


def ce_loss(logp, y):
    """Cross-entropy of log-probabilities ``[N, L]`` -> ``[N]``."""
    return F.cross_entropy(finite_logits(logp), y, reduction="none")


def margin_loss(logp, y):
    """DLR loss ``[N]`` (plain margin for two classes); > 0 iff misclassified."""
    z = finite_logits(logp)
    z_y = z.gather(1, y[:, None])[:, 0]
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    if z.shape[1] < 3:
        return other - z_y
    top = z.sort(1, descending=True).values
    scale = top[:, 0] - top[:, 2]
    # fewer than three finite classes: the plain margin (no division by a floored gap)
    scale = torch.where(torch.isneginf(logp).sum(1) > z.shape[1] - 3, torch.ones_like(scale), scale)
    return (other - z_y) / (scale + 1e-12)


def official_loss(logp, y):
    """Cross-entropy with the class probabilities ``exp(logp)`` as logits (masking diagnostic)."""
    return F.cross_entropy(logp.exp(), y, reduction="none")


def official_cluster_loss(model, x, y):
    """The reference code's attack loss on a cluster model, computed as it did: in linear
    space, ``e_j = exp(-||f - mu_j||^2 / (2 sigma^2))`` (no max shift, so far centers
    underflow to exactly 0), ``p_c = sum_{j in c} e_j / sum_j e_j``, then cross-entropy
    with ``p`` as logits. Returns ``(loss [N], log-probabilities [N, L])``."""
    head = model.head
    feats = model.features(x)
    d = clustr_fast.pairwise_sqdist(feats, head.centers.to(feats.dtype))
    e = torch.exp(-d / (2.0 * float(head.variance)))
    cls = head.center_classes.long().expand(d.shape[0], -1)
    sums = torch.zeros(d.shape[0], head.num_classes, dtype=e.dtype, device=e.device).scatter_add(1, cls, e)
    p = sums / sums.sum(1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
    return F.cross_entropy(p, y, reduction="none"), head(feats)


def _head_of(model):
    head = getattr(model, "head", None)
    if head is None or not hasattr(model, "features"):
        raise ValueError("attack: loss='magnet' needs a model with `.features(x)` and a cluster `.head`")
    return head


def nearest_own_center(feats, centers, center_classes, y):
    """Index ``[N]`` of the nearest center of each sample's class ``y``."""
    d = clustr_fast.pairwise_sqdist(feats.detach(), centers.to(feats.dtype))
    d = d.masked_fill(center_classes[None, :] != y[:, None], float("inf"))
    return d.argmin(1)


def magnet_attack_loss(model, x, y):
    """``(per-sample Magnet loss [N], log-probabilities [N, L])`` of ``model.features(x)``
    against the model's centers; the log-probabilities are ``model.head(features)``."""
    head = _head_of(model)
    feats = model.features(x)
    centers = head.centers.to(feats.dtype)
    assign = nearest_own_center(feats, centers, head.center_classes, y)
    loss = clustr_fast.magnet_loss(
        feats, centers, assign, head.center_classes, alpha=MAGNET_ATTACK_ALPHA,
        variance=float(head.variance), eps=0.0, reduction="none",
    )
    return loss, head(feats)


def targeted_margin_loss(logp, y, target):
    """``z_t - z_y`` ``[N]`` for target classes ``t`` (> 0 iff ``t`` beats ``y``)."""
    z = finite_logits(logp)
    return z.gather(1, target[:, None])[:, 0] - z.gather(1, y[:, None])[:, 0]


def on_logits(loss_fn):
    """The objective ``(model, x, y) -> (loss_fn(model(x), y) [N], model(x))`` of a loss on log-probabilities."""
    def objective(model, x, y):
        logp = model(x)
        return loss_fn(logp, y), logp
    return objective


def official_objective(model, x, y):
    """``official_cluster_loss`` on a cluster model, else cross-entropy with ``exp(logp)`` as logits."""
    if getattr(model, "head", None) is not None and hasattr(model, "features"):
        return official_cluster_loss(model, x, y)
    return on_logits(official_loss)(model, x, y)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the evaluation. ``name``: what ``clustr-fast eval --attack`` takes; ``label``:
    its column label; ``reads``: what the attack reads of the model; ``loss``: the name ``pgd(loss=)``
    takes (None: not a PGD on a loss of ours; ``run(model, x, y, eps=, n_classes=, seed=,
    batch_size=) -> (accuracy, correct [N])`` runs it); ``objective(model, x, y) -> (loss [N],
    log-probabilities [N, L])``; ``diagnostic``: a test of gradient masking, never a robustness
    number."""

    name: str
    label: str
    reads: str
    loss: str | None = None
    objective: Callable | None = None
    run: Callable | None = None
    diagnostic: bool = False


ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name, *, label, reads, loss=None, objective=None, run=None, diagnostic=False) -> AttackSpec:
    """Add an attack to ``ATTACKS``: a PGD attack gives ``loss`` and ``objective``, another ``run``."""
    if name in ATTACKS:
        raise ValueError(f"register_attack: an attack named {name!r} is already registered")
    if (loss is None) == (run is None) or (loss is not None and objective is None):
        raise ValueError(f"register_attack: {name!r} needs `loss` and `objective` (a PGD attack) or `run`")
    ATTACKS[name] = spec = AttackSpec(name, label, reads, loss, objective, run, diagnostic)
    return spec


def losses() -> tuple:
    """The names ``pgd(loss=...)`` takes, one per registered PGD attack."""
    return tuple(a.loss for a in ATTACKS.values() if a.loss is not None)


def attack_objective(model, x, y, loss, target=None):
    """``(per-sample loss [N], log-probabilities [N, L])`` at ``x`` for the PGD loss ``loss``;
    ``target`` [N] switches ``"margin"`` to its targeted form."""
    if target is not None:
        logp = model(x)
        return targeted_margin_loss(logp, y, target), logp
    return next(a for a in ATTACKS.values() if a.loss == loss).objective(model, x, y)


@dataclass
class AttackResult:
    """``x_adv [N, ...]`` (the kept iterate) and ``fooled [N]`` (misclassified at ``x_adv``)."""
    x_adv: torch.Tensor
    fooled: torch.Tensor


def _as_radius(eps, x, name):
    """``eps`` as a ``[N, 1, ...]`` tensor broadcastable against ``x``."""
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 0:
        e = e.expand(x.shape[0])
    if e.shape != (x.shape[0],):
        raise ValueError(f"pgd: `{name}` must be a number or a [N] tensor, got shape {tuple(e.shape)}")
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError(f"pgd: `{name}` must be finite and >= 0")
    return e.reshape(-1, *([1] * (x.dim() - 1)))


def _flat_norm(t):
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def _project(x_adv, x, eps, norm, clip):
    delta = x_adv - x
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    else:
        n = _flat_norm(delta)
        delta = delta * torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
    out = x + delta
    if clip is not None:
        out = out.clamp(clip[0], clip[1])
    return out


def _random_start(x, eps, norm, generator):
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        return (2 * u - 1) * eps
    g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    g = g / _flat_norm(g).clamp_min(1e-30)
    dim = x[0].numel()
    r = torch.rand((x.shape[0],), generator=generator, dtype=x.dtype).to(x.device) ** (1.0 / dim)
    return g * r.reshape(-1, *([1] * (x.dim() - 1))) * eps


def _check_args(model, x, y, steps, restarts, loss, norm, step_size):
    if not isinstance(model, nn.Module):
        raise TypeError(f"pgd: `model` must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("pgd: `x` must be a float tensor")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise ValueError(f"pgd: `y` must be an int64 tensor of shape [{x.shape[0]}]")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"pgd: `steps` must be an int >= 0, got {steps!r}")
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"pgd: `restarts` must be an int >= 1, got {restarts!r}")
    if loss not in losses():
        raise ValueError(f"pgd: `loss` must be one of {', '.join(losses())}, got {loss!r}")
    if norm not in NORMS:
        raise ValueError(f"pgd: `norm` must be one of {', '.join(NORMS)}, got {norm!r}")
    if step_size is not None and not (isinstance(step_size, (int, float)) and step_size > 0):
        raise ValueError(f"pgd: `step_size` must be a number > 0, got {step_size!r}")


def pgd(model, x, y, *, eps, steps=20, restarts=1, loss="ce", norm="linf", step_size=None,
        clip=(0.0, 1.0), random_start=True, seed=0, targets=None) -> AttackResult:
    """PGD with restarts; returns the first misclassified iterate found per sample.

    ``targets`` (``"margin"`` only): also run the targeted margin ``z_t - z_y``
    against each of the ``targets`` classes ranked highest at ``x`` (every restart
    runs once per target). Untargeted losses can stop at a local optimum when
    several classes border the input; targeted runs cover each border.
    ``eps``: radius (number, or ``[N]`` tensor for per-sample radii);
    ``step_size``: ``eta`` (default ``eps / 4``, the paper's 2/255 at 8/255);
    ``clip``: the input box (``None`` for unbounded inputs such as 2-D points).
    Samples already misclassified at ``x`` are returned unchanged as fooled.
    """
    _check_args(model, x, y, steps, restarts, loss, norm, step_size)
    if targets is not None and (loss != "margin" or not isinstance(targets, int) or targets < 1):
        raise ValueError(f"pgd: `targets` must be an int >= 1 and needs loss='margin', got {targets!r}")
    was_training = model.training
    model.eval()
    try:
        return _pgd(model, x.detach(), y, _as_radius(eps, x, "eps"), steps, restarts, loss,
                    norm, step_size, clip, random_start, seed, targets)
    finally:
        model.train(was_training)


def _pgd(model, x, y, eps, steps, restarts, loss, norm, step_size, clip, random_start, seed, targets):
    gen = torch.Generator().manual_seed(seed)
    eta = eps / 4 if step_size is None else torch.full_like(eps, float(step_size))
    with torch.no_grad():
        logp0 = model(x)
        fooled = logp0.argmax(1) != y
    ranked = None
    if targets is not None:
        z = finite_logits(logp0).masked_fill(torch.nn.functional.one_hot(y, logp0.shape[1]).bool(),
                                             float("-inf"))
        ranked = z.argsort(1, descending=True)[:, :min(targets, logp0.shape[1] - 1)]
    x_best = x.clone()
    runs = [(r, None) for r in range(restarts)] if ranked is None else \
        [(r, t) for r in range(restarts) for t in range(ranked.shape[1])]
    for _, t_rank in runs:
        idx = (~fooled).nonzero()[:, 0]
        if idx.numel() == 0:
            break
        xs, ys, es, etas = x[idx], y[idx], eps[idx], eta[idx]
        target = None if t_rank is None else ranked[idx, t_rank]
        xa = xs + _random_start(xs, es, norm, gen) if random_start else xs.clone()
        xa = _project(xa, xs, es, norm, clip)
        alive = torch.ones(idx.numel(), dtype=torch.bool, device=x.device)
        for t in range(steps + 1):
            xa = xa.detach().requires_grad_(t < steps)
            with torch.enable_grad():
                obj, logp = attack_objective(model, xa, ys, loss, target)
            hit = alive & (logp.detach().argmax(1) != ys)
            if bool(hit.any()):
                x_best[idx[hit]] = xa.detach()[hit]
                fooled[idx[hit]] = True
                alive &= ~hit
            if t == steps or not bool(alive.any()):
                break
            (grad,) = torch.autograd.grad(obj.sum(), xa)
            if norm == "linf":
                move = grad.sign()
            else:
                move = grad / _flat_norm(grad).clamp_min(1e-30)
            xa = _project(xa.detach() + etas * move, xs, es, norm, clip)
    return AttackResult(x_adv=x_best, fooled=fooled)


def input_gradient_norms(model, x, y, loss="ce"):
    """``||d loss / d x||_2`` per sample at the clean inputs ``[N]`` (zero means no signal)."""
    model.eval()
    xa = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        obj, _ = attack_objective(model, xa, y, loss)
        (g,) = torch.autograd.grad(obj.sum(), xa)
    return g.flatten(1).norm(dim=1)


def robust_accuracy(model, x, y, *, eps, batch_size=512, progress=None, **pgd_kw):
    """``(accuracy, correct [N] bool)`` under ``pgd(..., eps=eps, **pgd_kw)``, in batches.

    ``progress``: an optional callable ``progress(n_done)`` (e.g. a tqdm ``update``).
    ``eps == 0`` gives the clean accuracy.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"robust_accuracy: `batch_size` must be an int >= 1, got {batch_size!r}")
    correct = torch.zeros(x.shape[0], dtype=torch.bool)
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        if float(eps) == 0.0:
            model.eval()
            with torch.no_grad():
                ok = model(xb).argmax(1) == yb
        else:
            ok = ~pgd(model, xb, yb, eps=eps, **pgd_kw).fooled
        correct[s:s + batch_size] = ok.cpu()
        if progress is not None:
            progress(xb.shape[0])
    return float(correct.float().mean()) if correct.numel() else math.nan, correct


def eps_curve(model, x, y, eps_values, **kw):
    """Accuracy at each eps, made monotone the sound way: a sample broken at a smaller
    eps is broken at every larger one (the same perturbation lies in the larger ball).

    Returns ``(curve [[eps, acc], ...], raw [[eps, acc], ...])``; ``raw`` is each run alone.
    """
    eps_values = sorted(float(e) for e in eps_values)
    still = torch.ones(x.shape[0], dtype=torch.bool)
    curve, raw = [], []
    for e in eps_values:
        acc, ok = robust_accuracy(model, x, y, eps=e, **kw)
        raw.append([e, acc])
        still &= ok
        curve.append([e, float(still.float().mean())])
    return curve, raw


def torchattacks_accuracy(model, x, y, *, eps, attack="pgd", steps=20, step_size=None,
                          restarts=1, n_classes=None, seed=0, batch_size=512, norm="linf"):
    """Accuracy under ``torchattacks`` PGD or AutoAttack (standard; ``norm`` "linf" or "l2") on the
    same model.

    The wrapper feeds torchattacks finite log-probabilities as logits (log_softmax
    is shift invariant, so CE and DLR see the model's own logits). Needs the
    optional extra ``clustr_fast[robust]``; raises ``ImportError`` when absent.
    """
    import torchattacks  # optional

    wrapped = FiniteLogits(model).eval()
    if norm not in NORMS:
        raise ValueError(f"torchattacks_accuracy: `norm` must be one of {', '.join(NORMS)}, got {norm!r}")
    if attack == "pgd" and norm == "l2":
        atk = torchattacks.PGDL2(wrapped, eps=eps, alpha=step_size or eps / 4, steps=steps, random_start=True)
    elif attack == "pgd":
        atk = torchattacks.PGD(wrapped, eps=eps, alpha=step_size or eps / 4, steps=steps,
                               random_start=True)
    elif attack == "autoattack":
        if n_classes is None:
            raise ValueError("torchattacks_accuracy: `n_classes` is needed for AutoAttack")
        atk = torchattacks.AutoAttack(wrapped, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                                      n_classes=n_classes, seed=seed)
    else:
        raise ValueError(f"torchattacks_accuracy: `attack` must be 'pgd' or 'autoattack', got {attack!r}")
    correct = torch.zeros(x.shape[0], dtype=torch.bool)
    torch.manual_seed(seed)
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        ok = torch.ones(xb.shape[0], dtype=torch.bool)
        for _ in range(restarts if attack == "pgd" else 1):
            xa = atk(xb, yb)
            with torch.no_grad():
                ok &= (wrapped(xa).argmax(1) == yb).cpu()
        correct[s:s + batch_size] = ok
    return float(correct.float().mean()), correct


class FiniteLogits(nn.Module):
    """``model(x)`` with ``-inf`` log-probabilities floored at ``LOG_FLOOR``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return finite_logits(self.model(x))


def _autoattack(model, x, y, *, eps, n_classes, seed, batch_size, norm="linf", **_):
    return torchattacks_accuracy(model, x, y, eps=eps, attack="autoattack", n_classes=n_classes, seed=seed,
                                 batch_size=batch_size, norm=norm)


register_attack("pgd", label="PGD (CE)", reads="log-probabilities", loss="ce", objective=on_logits(ce_loss))
register_attack("margin", label="PGD (margin)", reads="log-probabilities", loss="margin",
                objective=on_logits(margin_loss))
register_attack("magnet", label="adaptive (Magnet)", reads="features and the model's centers", loss="magnet",
                objective=magnet_attack_loss)
register_attack("official-loss", label="official loss (masking diagnostic)",
                reads="class probabilities in linear space", loss="official-loss", objective=official_objective,
                diagnostic=True)
register_attack("autoattack", label="AutoAttack", reads="log-probabilities (torchattacks)", run=_autoattack)
LOSSES = losses()
