"""One epoch of cross-entropy training (the warm start, and the "ce" baseline)."""
from __future__ import annotations

import math

import torch.nn.functional as F
import torch
from tqdm.auto import tqdm

from .augment import random_crop_flip
from .distributed import shard_permutation


def ce_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Step decay of the paper's warm start: x0.1 after 1/3 and again after 2/3 of the epochs."""
    drops = sum(epoch >= math.ceil(epochs * f) for f in (1 / 3, 2 / 3)) if epochs >= 3 else 0
    return base_lr * 0.1 ** drops


def ce_epoch(net, optimizer, train, *, batch_size, device, generator, augment, max_steps=None,
             progress=False, desc="ce", world=None, aug_generator=None):
    """Shuffle ``train`` with ``generator`` and take Adam steps on the cross-entropy of
    ``net(x).logits``. Returns ``{"train_loss", "steps", "planned_steps"}``.

    ``world`` (several ranks): every rank draws the same permutation and takes its share
    (:func:`.distributed.shard_permutation`), so all take the same number of steps;
    ``aug_generator`` (default ``generator``) draws the augmentation."""
    net.train()
    n = len(train)
    perm = torch.randperm(n, generator=generator)
    if world is not None:
        perm = shard_permutation(perm, world)
    aug_generator = generator if aug_generator is None else aug_generator
    planned = math.ceil(perm.numel() / batch_size)
    steps = planned if max_steps is None else min(planned, max_steps)
    total, bar = 0.0, tqdm(range(steps), desc=desc, leave=False, disable=not progress)
    for step in bar:
        idx = perm[step * batch_size:(step + 1) * batch_size]
        x, y = train.x[idx].to(device), train.y[idx].to(device)
        if augment:
            x = random_crop_flip(x, aug_generator)
        loss = F.cross_entropy(net(x)[0], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return {"train_loss": total / max(steps, 1), "steps": steps, "planned_steps": planned}
