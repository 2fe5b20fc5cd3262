"""The process group of a distributed call: which ranks, the collectives, the agreement check.

- :func:`resolve` turns ``group`` into a :class:`Comm`, or ``None`` when the call runs in one
  process (no initialised process group, or a group of one rank).
- :class:`Comm` (``clustr_fast.ranks``, the one wrapper of the collectives, shared with training
  and evaluation) carries the collectives the distributed k-means uses (``all_reduce`` with
  SUM, ``all_gather``, ``broadcast`` from group rank 0). A collective that fails (a rank raised
  or exited, the process group's timeout passed) raises :class:`DistributedError` naming the
  function, the stage and the rank. Buffers travel on the device the backend needs (CUDA for
  NCCL, the CPU for Gloo) and come back on the caller's device.
- :func:`agree` is the first collective of every call: one small ``all_gather`` of the shapes
  and arguments of each rank, so that ranks that disagree (or a rank whose input is invalid)
  raise on every rank, before any collective whose shape depends on them.
- :class:`Packed` lays several tensors out in one float64 buffer, so that one ``all_reduce``
  carries them all.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ..ranks import Comm, DistributedError

__all__ = ["Comm", "DistributedError", "Packed", "agree", "resolve"]


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def resolve(group, op: str) -> Optional["Comm"]:
    """The ranks of ``group`` (``None``: the default group), or ``None`` for one process.

    One process: no initialised process group and ``group=None``, or a group of one rank.
    Raises ``RuntimeError`` when ``group`` is given but no process group is initialised, and
    ``ValueError`` when this process is not a member of ``group``.
    """
    if not _initialised():
        if group is not None:
            raise RuntimeError(f"{op}: `group` was given but torch.distributed has no initialised process group "
                               "(call torch.distributed.init_process_group first)")
        return None
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"{op}: this process (global rank {dist.get_rank()}) is not a member of `group`")
    world = dist.get_world_size(group)
    if world == 1:
        return None
    return Comm(group, rank, world, op)


# --------------------------------------------------------------------------- agreement check

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_code(dtype) -> float:
    return float(DTYPES.index(dtype)) if dtype in DTYPES else -1.0


def dtype_name(code: float) -> str:
    return str(DTYPES[int(code)]) if 0 <= code < len(DTYPES) else "not a float dtype"


def _show(name: str, v: float) -> str:
    if name == "x.dtype":
        return dtype_name(v)
    if math.isnan(v):
        return "none"
    return str(int(v)) if float(v).is_integer() else repr(v)


def agree(comm: Comm, fields: Sequence[tuple], error: Optional[BaseException] = None) -> torch.Tensor:
    """Check on every rank that the ranks agree; returns the gathered values ``[world, len(fields)]``.

    ``fields``: ``(name, value, must_agree)`` with a numeric value (``nan`` where unknown);
    ``error``: the exception this rank's own input checks raised, or ``None``. One ``all_gather``
    of ``[status, values...]`` (float64). Then, identically on every rank: a rank whose checks
    failed re-raises its error and the others raise ``ValueError`` naming that rank; ranks that
    differ on a ``must_agree`` field raise ``ValueError`` naming the argument and both ranks.
    """
    vals = [float("nan") if error is not None else float(v) for _, v, _ in fields]
    mine = torch.tensor([1.0 if error is not None else 0.0] + vals, dtype=torch.float64)
    every = comm.all_gather(mine, "the input check (shapes and arguments of every rank)")
    bad = (every[:, 0] != 0).nonzero().flatten().tolist()
    if bad:
        if error is not None:
            raise error
        raise ValueError(f"{comm.op}: rank {bad[0]} rejected its input (the error raised on rank {bad[0]} says why); "
                         "every rank stops")
    table = every[:, 1:]
    for j, (name, _, must_agree) in enumerate(fields):
        if not must_agree:
            continue
        col = table[:, j].tolist()
        for r, v in enumerate(col):
            same = (v == col[0]) or (math.isnan(v) and math.isnan(col[0]))
            if not same:
                raise ValueError(f"{comm.op}: ranks disagree on `{name}`: rank 0 has {_show(name, col[0])}, "
                                 f"rank {r} has {_show(name, v)}")
    return table


def checked(fn):
    """Run the local checks ``fn()``; returns ``(result, None)`` or ``(None, the exception)``."""
    try:
        return fn(), None
    except (TypeError, ValueError) as err:
        return None, err


# --------------------------------------------------------------------------- packed buffers


class Packed:
    """Several tensors in one float64 buffer: ``views[i]`` has ``shapes[i]`` and shares ``buf``.

    Filling the views and reducing ``buf`` once sends them all in one collective.
    """

    def __init__(self, shapes: Sequence[tuple], device):
        sizes = [math.prod(s) for s in shapes]
        self.buf = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
        self.views = []
        start = 0
        for shape, size in zip(shapes, sizes):
            self.views.append(self.buf[start:start + size].view(shape))
            start += size

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def zero_(self) -> "Packed":
        self.buf.zero_()
        return self
