"""Run a test function on several real processes (Gloo, ``file://`` rendezvous) with a hard timeout.

``run_ranks(fn, world, *args)`` spawns ``world`` processes; each sets one CPU thread, joins a Gloo
process group through a rendezvous file in a fresh temporary folder, calls
``fn(rank, world, *args)`` and writes what it returned (or the exception it raised: type,
message, traceback) to a file the parent reads back. The parent waits at most ``timeout``
seconds for all of them, then kills every process still alive by its pid, so nothing can hang
the test run. ``fn`` must be a module-level function of an importable module (spawn pickles it by
name).
"""
from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class RankResult:
    rank: int
    value: Any = None
    error_type: Optional[str] = None
    error: Optional[str] = None
    trace: Optional[str] = None
    finished: bool = False         # wrote its result before the deadline

    @property
    def ok(self) -> bool:
        return self.finished and self.error_type is None


def _child(fn, rank, world, rdzv, outdir, args, gloo_timeout):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import torch.distributed as dist

    out = dict(rank=rank)
    try:
        dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=gloo_timeout))
        out["value"] = fn(rank, world, *args)
    except BaseException as err:  # noqa: BLE001  (reported to the parent, which asserts on it)
        out.update(error_type=type(err).__name__, error=str(err), trace=traceback.format_exc())
    path = os.path.join(outdir, f"rank{rank}.pt")
    torch.save(out, path + ".tmp")
    os.replace(path + ".tmp", path)
    if "error_type" not in out:
        dist.destroy_process_group()
    os._exit(0)  # no atexit hooks: a peer that already left cannot make this process wait


def run_ranks(fn, world: int, *args, timeout: float = 120.0, gloo_timeout: float = 60.0) -> list[RankResult]:
    """Results of ``fn(rank, world, *args)`` on ``world`` Gloo ranks, in rank order.

    Raises ``AssertionError`` when a rank has not finished within ``timeout`` seconds (after
    killing every started process).
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="clustr_dist_") as tmp:
        rdzv = os.path.join(tmp, "rendezvous")
        procs = []
        try:
            for rank in range(world):
                p = ctx.Process(target=_child, args=(fn, rank, world, rdzv, tmp, args, gloo_timeout), daemon=True)
                p.start()
                procs.append(p)
            deadline = time.monotonic() + timeout
            for p in procs:
                p.join(max(0.0, deadline - time.monotonic()))
            results = []
            for rank in range(world):
                path = os.path.join(tmp, f"rank{rank}.pt")
                if os.path.exists(path):
                    data = torch.load(path, weights_only=False)
                    results.append(RankResult(rank, data.get("value"), data.get("error_type"), data.get("error"),
                                              data.get("trace"), True))
                else:
                    results.append(RankResult(rank))
            stuck = [r for r in range(world) if procs[r].is_alive()]
            if stuck:
                raise AssertionError(f"ranks {stuck} of {world} did not finish within {timeout} s")
            lost = [(r, procs[r].exitcode) for r in range(world) if not results[r].finished]
            if lost:
                raise AssertionError(f"ranks {lost} (rank, exit code) of {world} exited without a result")
            return results
        finally:
            for p in procs:
                if p.is_alive() and p.pid is not None:
                    try:
                        os.kill(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                p.join(10)


def values(results: list[RankResult]) -> list:
    """The value of every rank; fails with the first rank's traceback if any rank raised."""
    for r in results:
        assert r.ok, f"rank {r.rank} raised {r.error_type}: {r.error}\n{r.trace}"
    return [r.value for r in results]
