"""Training on several processes (``torchrun``): the process group from the environment, the
shards each rank trains on, and the collectives of the training loop.

Everything here is a no-op with one process: a plain run and a run of one rank under
``torchrun`` take the same code path and produce the same numbers. With ``size > 1``:

- rows of a data set are sharded by a known map (row ``i`` lives on rank ``i % size``), so any
  per-row result gathered from the ranks is rebuilt identically on every rank;
- evaluation shards whole batches (batch ``b`` on rank ``b % size``), so every batch is the
  batch one process would score, and per-row results merged with a sum equal the plain run;
- ``GlobalSum`` is an ``all_reduce`` with a gradient (its backward sums the gradients of every
  rank), for the global batch variance of the Magnet phase.

The world, the row and batch maps and the collectives themselves live in ``clustr_fast.ranks``
(shared with the evaluation, ``clustr_fast.robust``); the names used here are also exported
from this module.
"""
from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

from ..ranks import World, all_gather, all_reduce_sum, batches, current, gather_rows, merge_rows, rows
from .config import ConfigError
from .refresh import Clustering, embed

__all__ = ["ENV_VARS", "GlobalSum", "World", "all_gather", "all_reduce_sum", "barrier", "batches",
           "broadcast_object", "current", "ddp_model", "feature_parameters", "from_rank0", "gather_losses",
           "gather_rows", "global_sum", "launched", "mean_stats", "merge_rows", "rank_device",
           "rank_generator", "rows", "setup", "shard_permutation", "sharded_refresh", "sync_buffers",
           "teardown"]

# Set by torchrun (and torch.distributed.launch) in every process it starts.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True when this process was started by torchrun (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ


def _env_int(name: str, default=None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ConfigError(f"distributed: environment variable {name} is not set (start the run with torchrun)")
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"distributed: environment variable {name}={text!r} is not an integer") from None


def rank_device(device: str, world: World) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` when ranks share a machine.
    A GPU named by index is kept in a process group the caller created (it placed its ranks),
    and refused under torchrun with several ranks on the machine (they would share it)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not world.active:
        return dev
    if dev.index is None:
        dev = torch.device("cuda", world.local_rank % max(torch.cuda.device_count(), 1))
    elif world.owned and world.local_size > 1:
        raise ConfigError(f"distributed: `device` {device!r} names one GPU but {world.local_size} processes run "
                          f"on this machine (rank {world.rank}); pass `device` 'cuda' to give each its own")
    torch.cuda.set_device(dev)
    return dev


def setup(device: str = "cpu") -> tuple[World, torch.device]:
    """The world of this process and its device.

    An initialised default process group is used as it is (its owner destroys it). Otherwise,
    under torchrun (``WORLD_SIZE`` set), the group is initialised from the environment: NCCL
    for CUDA, Gloo for the CPU; with several ranks on one machine each takes
    ``cores // LOCAL_WORLD_SIZE`` CPU threads. Otherwise: one process.
    """
    if dist.is_available() and dist.is_initialized():
        world = current()
        return world, rank_device(device, world)
    if not launched():
        return World(), torch.device(device)
    if not dist.is_available():
        raise ConfigError("distributed: this PyTorch build has no torch.distributed; run without torchrun")
    size, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    local_rank, local_size = _env_int("LOCAL_RANK", rank), _env_int("LOCAL_WORLD_SIZE", size)
    world = World(rank, size, local_rank, local_size, active=True, owned=True)
    cuda = torch.device(device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ConfigError(f"distributed: `device` {device!r} is not available on rank {rank} (no CUDA GPU)")
    dev = rank_device(device, world)
    if local_size > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local_size))
    kw = {"device_id": dev} if cuda else {}
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size, **kw)
    return world, dev


def teardown(world: World) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if world.owned and dist.is_initialized():
        dist.destroy_process_group()
        world.owned = False


# --------------------------------------------------------------------------- shards


def shard_permutation(perm: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a permutation shared by every rank: the permutation is padded by
    its own first entries to a multiple of ``size`` and rank r takes entries ``r, r+size, ...``,
    so every rank gets ``ceil(n / size)`` rows and takes as many steps."""
    if not world.sharded:
        return perm
    n = perm.numel()
    per = math.ceil(n / world.size)
    padded = perm.repeat(math.ceil(per * world.size / n))[: per * world.size]
    return padded[world.rank::world.size]


def rank_generator(seed: int, epoch: int, rank: int, device="cpu") -> torch.Generator:
    """A generator keyed on ``(seed, epoch, rank)`` (splitmix64): the draws of one rank in one
    epoch, the same when that epoch is redone after a restart."""
    z = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + (rank + 1) * 0x94D049BB133111EB)
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return torch.Generator(device=device).manual_seed(z & 0x7FFFFFFFFFFFFFFF)


# --------------------------------------------------------------------------- collectives


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every rank."""
    if not world.sharded:
        return obj
    return world.comm().broadcast_object(obj, "an object of rank 0")


def from_rank0(fn, world: World, errors=(ConfigError, ValueError, FileNotFoundError)):
    """``fn()`` run on rank 0 alone and its result sent to every rank; an error ``fn`` raises
    (one of ``errors``) is raised on every rank, so no rank waits for the others in vain."""
    if not world.sharded:
        return fn()
    result, error = None, None
    if world.main:
        try:
            result = fn()
        except errors as exc:
            error = exc
    result, error = broadcast_object((result, error), world)
    if error is not None:
        raise error
    return result


def sync_buffers(module: torch.nn.Module, world: World) -> None:
    """Rank 0's buffers (batch-norm statistics) on every rank: each rank's last training forward
    updated its own, and the refresh, the evaluation and the checkpoint must see one set."""
    if not world.sharded:
        return
    comm = world.comm()
    for buf in module.buffers():
        if buf.is_floating_point() or buf.dtype in (torch.int64, torch.int32):
            tmp = buf.detach().to(comm.device).contiguous()
            comm.broadcast_(tmp, "the module buffers of rank 0")
            buf.copy_(tmp)


def mean_stats(stats: dict, keys, world: World) -> dict:
    """``stats`` with each of ``keys`` replaced by its mean over the ranks (float64)."""
    if not world.sharded:
        return stats
    names = [k for k in keys if k in stats]
    total = all_reduce_sum(torch.tensor([float(stats[k]) for k in names], dtype=torch.float64), world)
    return {**stats, **{k: float(v) / world.size for k, v in zip(names, total.tolist())}}


class GlobalSum(torch.autograd.Function):
    """``all_reduce`` (sum) with a gradient: the backward sums the incoming gradients of every
    rank, so each rank's inputs receive the gradient of the sum of every rank's objective."""

    @staticmethod
    def forward(ctx, t):
        ctx.world = current()
        return all_reduce_sum(t, ctx.world).clone()

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad.contiguous(), ctx.world)


def global_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of ``t`` over the ranks, differentiable (:class:`GlobalSum`); ``t`` with one rank."""
    return GlobalSum.apply(t) if world.sharded else t


def gather_losses(indices: torch.Tensor, losses: torch.Tensor, width: int, world: World):
    """Every rank's ``(indices [B_r], losses [B_r])`` of one step, concatenated in rank order
    (``B_r <= width``), so every rank's sampler records the same losses."""
    if not world.sharded:
        return indices, losses
    idx = torch.full((width,), -1, dtype=torch.float64)
    val = torch.zeros(width, dtype=torch.float64)
    b = indices.numel()
    idx[:b] = indices.detach().cpu().double()
    val[:b] = losses.detach().cpu().double()
    parts = all_gather(torch.stack([idx, val]), world)
    every = torch.cat(parts, dim=1)
    keep = every[0] >= 0
    return every[0][keep].long(), every[1][keep]


# --------------------------------------------------------------------------- the refresh


def sharded_refresh(net, train, *, k, iters, alpha, device, generator, timer, world, n_init=1):
    """The refresh of :func:`clustr_fast.train.magnet.refresh` with every rank embedding its
    rows (:func:`rows`): the distributed per-class k-means gives the global centers and this
    rank's assignments; sigma^2 and the full-set loss are sums over the ranks; the assignment
    of every training row is gathered, identical on every rank."""
    if n_init != 1:
        raise ConfigError(f"fit: `kmeans_n_init`={n_init} runs in one process only; the distributed "
                          "per-class k-means seeds once (use kmeans_n_init=1 under torchrun)")
    import clustr_fast
    from clustr_fast.distributed import kmeans_per_group

    n = len(train)
    mine = rows(n, world)
    with timer("embed"):
        feats = embed(net, train.x[mine], device)
    with timer("kmeans"):
        # seeding draws from the shared generator: every rank's advances alike
        labels, centers = kmeans_per_group(feats, train.y[mine].to(device), k, max_iter=iters,
                                           generator=generator, num_groups=train.num_classes)
        center_classes = torch.arange(centers.shape[0], device=centers.device) // k
        own = (feats.to(centers.dtype) - centers[labels]).pow(2).sum().double().reshape(1)
        variance = (all_reduce_sum(own, world) / (n - 1)).to(centers.dtype).reshape(())
        assign = gather_rows(labels, n, world)
    with timer("monitor"):
        local = clustr_fast.magnet_loss(feats, centers, labels, center_classes, alpha=alpha,
                                        variance=variance, reduction="sum")
        loss = float(all_reduce_sum(local.detach().double().reshape(1), world)) / n
    return Clustering(assign, centers, center_classes, variance.detach(), loss)


# --------------------------------------------------------------------------- the model


def feature_parameters(net: torch.nn.Module, example: torch.Tensor) -> list:
    """The trainable parameters that the features ``net(x)[1]`` depend on, found by one
    forward of ``example`` in eval mode (no statistics change)."""
    params = [p for p in net.parameters() if p.requires_grad]
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            feats = net(example)[1]
            grads = torch.autograd.grad(feats.sum(), params, allow_unused=True)
    finally:
        net.train(was_training)
    return [p for p, g in zip(params, grads) if g is not None]


def ddp_model(net: torch.nn.Module, world: World, device: torch.device, features_of=None):
    """``(model, frozen)``: ``net`` in DistributedDataParallel when a process group is in use
    (else ``net`` itself), and the parameters set to ``requires_grad=False`` for it.

    ``features_of`` (an input batch): the phase trains on the features alone (Magnet,
    QTRADES), so the parameters they do not depend on (the logits layer) are frozen while it
    runs: DDP waits for a gradient of every trainable parameter it holds, and those get none.
    Adam skips them either way, so one rank gives the numbers of a plain run."""
    if not world.active:
        return net, []
    frozen = []
    if features_of is not None:
        used = {id(p) for p in feature_parameters(net, features_of)}
        frozen = [p for p in net.parameters() if p.requires_grad and id(p) not in used]
        for p in frozen:
            p.requires_grad_(False)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids), frozen


def barrier(world: World) -> None:
    """Wait for every rank (the end of a run: rank 0's last checkpoint is on disk)."""
    if world.sharded:
        world.comm().barrier("the end of the run")
