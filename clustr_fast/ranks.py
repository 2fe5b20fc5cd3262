"""The ranks of a ``torch.distributed`` process group: the one wrapper of the collectives, and
how training and evaluation split their rows and batches over the ranks.

It sits below everything that works on several processes (``clustr_fast.distributed``,
``clustr_fast.train``, ``clustr_fast.robust``) and imports nothing of the package.

- :class:`Comm` wraps the collectives (``all_reduce`` with SUM, ``all_gather``, ``broadcast``
  from group rank 0, a Python object from rank 0, a barrier). A collective that fails (a rank
  raised or exited, the process group's timeout passed) raises :class:`DistributedError` naming
  the caller, the stage and the rank. Buffers travel on :func:`comm_device` (the current GPU
  under NCCL, the CPU otherwise) and come back on the caller's device.
- :class:`World` is the default process group as a run sees it; with one rank every function
  below is a no-op, so a plain run and a run of one rank under ``torchrun`` take the same path.
  With several: row ``i`` of a data set lives on rank ``i % size`` (:func:`rows`), batch ``b``
  on rank ``b % size`` (:func:`batches`), and per-row results come back whole on every rank
  (:func:`gather_rows`, :func:`merge_rows`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """A collective failed: another rank raised, exited or did not arrive within the group's timeout."""


def comm_device(group=None) -> torch.device:
    """Where the collective buffers of ``group`` (None: the default group) live: the current CUDA
    device under NCCL, the CPU otherwise."""
    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Comm:
    """``world`` ranks of ``group`` (None: the default group); this process is group rank ``rank``.

    ``op`` names the caller in errors; every method takes ``stage``, a few words saying what the
    collective carries. ``device``: where collective buffers live (:func:`comm_device`).
    """

    def __init__(self, group, rank: int, world: int, op: str):
        self.group, self.rank, self.world, self.op = group, rank, world, op
        self.device = comm_device(group)
        self.src = dist.get_global_rank(group, 0) if group is not None else 0

    def _failed(self, what: str, stage: str, err: BaseException) -> DistributedError:
        return DistributedError(
            f"{self.op}: {what} of {stage} failed on rank {self.rank} of {self.world}: another rank raised, exited "
            f"or did not arrive within the process group's timeout (init_process_group(timeout=...)). Cause: {err}")

    def _on(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device)

    def all_reduce_(self, t: torch.Tensor, stage: str) -> torch.Tensor:
        """Sum of ``t`` over the ranks, in place (``t`` contiguous); returns ``t``."""
        buf = self._on(t)
        try:
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        except Exception as err:  # DistBackendError, gloo/NCCL RuntimeError, timeouts
            raise self._failed("all_reduce", stage, err) from err
        if buf is not t:
            t.copy_(buf)
        return t

    def all_gather(self, t: torch.Tensor, stage: str) -> torch.Tensor:
        """``[world, *t.shape]``: row r is rank r's ``t`` (same shape and dtype on every rank)."""
        buf = self._on(t.contiguous())
        out = [torch.empty_like(buf) for _ in range(self.world)]
        try:
            dist.all_gather(out, buf, group=self.group)
        except Exception as err:
            raise self._failed("all_gather", stage, err) from err
        return torch.stack(out).to(t.device)

    def broadcast_(self, t: torch.Tensor, stage: str) -> torch.Tensor:
        """Group rank 0's ``t`` on every rank, in place (``t`` contiguous); returns ``t``."""
        buf = self._on(t)
        try:
            dist.broadcast(buf, src=self.src, group=self.group)
        except Exception as err:
            raise self._failed("broadcast", stage, err) from err
        if buf is not t:
            t.copy_(buf)
        return t

    def broadcast_object(self, obj, stage: str):
        """Group rank 0's ``obj`` (any picklable object) on every rank."""
        box = [obj if self.rank == 0 else None]
        try:
            dist.broadcast_object_list(box, src=self.src, group=self.group, device=self.device)
        except Exception as err:
            raise self._failed("broadcast", stage, err) from err
        return box[0]

    def barrier(self, stage: str) -> None:
        """Wait for every rank."""
        try:
            dist.barrier(group=self.group)
        except Exception as err:
            raise self._failed("barrier", stage, err) from err


# --------------------------------------------------------------------------- the world of a run


@dataclass
class World:
    """The processes of a run. ``active``: a process group is in use (DDP, rank-0 writes), also
    with one rank; ``size > 1``: work and data are sharded. ``owned``: the run created the
    process group and destroys it at its end (``clustr_fast.train.distributed``)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    active: bool = False
    owned: bool = False

    @property
    def main(self) -> bool:
        """This process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1

    def comm(self) -> Comm:
        """The collectives over the default process group (``size > 1``)."""
        return Comm(None, self.rank, self.size, "clustr_fast (several ranks)")


def current() -> World:
    """The world of the default process group (one process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    rank, size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    return World(rank, size, local_rank, local_size, active=True)


def rows(n: int, world: World) -> torch.Tensor:
    """Indices of this rank's rows of an ``n``-row data set (row ``i`` on rank ``i % size``)."""
    return torch.arange(world.rank, n, world.size)


def batches(n: int, batch_size: int, world: World) -> list:
    """``(start, stop)`` of this rank's batches of ``range(n)`` (batch ``b`` on rank ``b % size``)."""
    starts = range(world.rank * batch_size, n, world.size * batch_size)
    return [(s, min(s + batch_size, n)) for s in starts]


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of ``t`` over the ranks (a new tensor on ``t``'s device); ``t`` itself with one rank."""
    if not world.sharded:
        return t
    comm = world.comm()
    buf = t.detach().to(comm.device, copy=True).contiguous()
    return comm.all_reduce_(buf, "a sum over the ranks").to(t.device)


def all_gather(t: torch.Tensor, world: World) -> list:
    """Every rank's ``t`` (same shape and dtype on every rank), in rank order."""
    if not world.sharded:
        return [t]
    return list(world.comm().all_gather(t.detach(), "one tensor of every rank").unbind(0))


def gather_rows(local: torch.Tensor, n: int, world: World) -> torch.Tensor:
    """The ``n`` rows of a sharded per-row result (``local``: this rank's rows, in the order of
    :func:`rows`), rebuilt on every rank."""
    if not world.sharded:
        return local
    per = math.ceil(n / world.size)
    pad = local.new_zeros((per - local.shape[0], *local.shape[1:]))
    parts = all_gather(torch.cat([local, pad]), world)
    out = local.new_empty((n, *local.shape[1:]))
    for r, part in enumerate(parts):
        count = len(range(r, n, world.size))
        out[r::world.size] = part[:count]
    return out


def merge_rows(full: torch.Tensor, world: World) -> torch.Tensor:
    """A per-row result in which each rank filled its own rows and left the others zero: the
    sum over the ranks (exact: one term per row is not zero)."""
    if not world.sharded:
        return full
    if full.dtype == torch.bool:
        return all_reduce_sum(full.to(torch.uint8), world).bool()
    return all_reduce_sum(full, world)
