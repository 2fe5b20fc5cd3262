"""Distributed Lloyd on the CPU: 2 ranks x 1 thread against 1 rank x 2 threads (Gloo).

    python benchmarks/bench_distributed.py [--save] [--rows 50000 --dim 64 --k 64 --iters 20]

Times ``clustr_fast.distributed.kmeans`` from the same initial centers (``tol=0``, at most
``--iters`` iterations; after a warm-up call, the least of ``--repeats`` timed fits) in a
process group of one rank with two threads (the single-process ``KMeans`` fit: one fused Lloyd
step per iteration), of two ranks with one thread each (half of the rows per rank, one packed
``all_reduce`` per iteration) and of one rank with one thread. Prints

    efficiency = t(1 rank x 2 threads) / t(2 ranks x 1 thread)      (1.0: no cost for distributing)
    speed-up over one thread = t(1 rank x 1 thread) / t(2 ranks x 1 thread)      (ideal: 2)

and the bytes all_reduced per iteration, ``8 (K d + K + 1)``, with the measured time of one such
``all_reduce``. The machine's load average is recorded too: other processes on the cores
distort the two-thread time most. ``--save`` writes the result to ``benchmarks/results/distributed/<card>.json``
(a folder of its own: ``benchmarks/results/*.json`` are the card files of ``report.py``).

Under pytest (``pytest benchmarks --benchmark-only``) ``test_distributed_lloyd`` times one
2-rank run, spawn included. Importing this file runs nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results", "distributed")


def _data(rows, dim, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=g)
    return x, x[torch.randperm(rows, generator=g)[:k]].clone()


def _rank(rank, world, threads, rdzv, out, rows, dim, k, iters, repeats):
    """One rank: warm-up, then the timed fits; rank 0 writes ``out`` (JSON)."""
    torch.set_num_threads(threads)
    import torch.distributed as dist

    import clustr_fast.distributed as cfd

    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    x, init = _data(rows, dim, k)
    part = (rows + world - 1) // world
    shard = x[rank * part:(rank + 1) * part].contiguous()
    cfd.kmeans(shard, k, init=init, max_iter=2, tol=0.0)  # warm-up: first calls, allocations
    seconds = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        centers, labels, inertia, n_iter = cfd.kmeans(shard, k, init=init, max_iter=iters, tol=0.0)
        dist.barrier()
        seconds.append(time.perf_counter() - t0)
    packed = torch.zeros(k * dim + k + 1, dtype=torch.float64)
    reps = 50
    dist.barrier()
    t1 = time.perf_counter()
    for _ in range(reps):
        dist.all_reduce(packed)
    allreduce_ms = (time.perf_counter() - t1) / reps * 1e3
    if rank == 0:
        with open(out, "w") as f:
            json.dump(dict(seconds=min(seconds), all_seconds=seconds, n_iter=n_iter, inertia=inertia,
                           allreduce_ms=allreduce_ms, bytes=packed.numel() * 8), f)
    dist.destroy_process_group()


def run(world, threads, rows, dim, k, iters, repeats=1, timeout=600.0):
    """Rank 0's measurement of one process group of ``world`` ranks x ``threads`` threads."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="clustr_bench_") as tmp:
        out = os.path.join(tmp, "rank0.json")
        procs = [ctx.Process(target=_rank, args=(r, world, threads, os.path.join(tmp, "rdzv"), out, rows, dim, k,
                                                 iters, repeats), daemon=True) for r in range(world)]
        try:
            for p in procs:
                p.start()
            deadline = time.monotonic() + timeout
            for p in procs:
                p.join(max(0.0, deadline - time.monotonic()))
            if any(p.is_alive() for p in procs) or not os.path.exists(out):
                raise RuntimeError(f"bench_distributed: {world} ranks x {threads} threads did not finish "
                                   f"(exit codes {[p.exitcode for p in procs]})")
            with open(out) as f:
                return json.load(f)
        finally:
            for p in procs:
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGKILL)
                p.join(10)


def measure(rows=50000, dim=64, k=64, iters=20, repeats=3):
    load = os.getloadavg()[0]
    one = run(1, 2, rows, dim, k, iters, repeats)
    two = run(2, 1, rows, dim, k, iters, repeats)
    single = run(1, 1, rows, dim, k, iters, repeats)
    return dict(rows=rows, dim=dim, k=k, iters=iters, repeats=repeats, backend="gloo",
                t_1rank_2threads_s=one["seconds"], t_2ranks_1thread_s=two["seconds"],
                t_1rank_1thread_s=single["seconds"],
                times_s={"1x2": one["all_seconds"], "2x1": two["all_seconds"], "1x1": single["all_seconds"]},
                n_iter_1rank=one["n_iter"], n_iter_2ranks=two["n_iter"],
                inertia_1rank=one["inertia"], inertia_2ranks=two["inertia"],
                efficiency=one["seconds"] / two["seconds"],
                speedup_over_1thread=single["seconds"] / two["seconds"],
                allreduce_bytes_per_iter=two["bytes"], allreduce_ms=two["allreduce_ms"],
                load_average=[round(load, 2), round(os.getloadavg()[0], 2)])


def save(result):
    sys.path.insert(0, HERE)
    import report

    dev = torch.device("cpu")
    card = report.card_name(dev)
    doc = dict(schema=1, card=card, machine=report.machine_info(dev), versions=report.versions(dev),
               date=time.strftime("%Y-%m-%d", time.gmtime()), commit=report.git_commit(), result=result)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{card}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="timed fits per configuration (the least is kept)")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/distributed/<card>.json")
    args = ap.parse_args(argv)
    r = measure(args.rows, args.dim, args.k, args.iters, args.repeats)
    print(f"Lloyd {r['rows']} x {r['dim']}, k = {r['k']}, gloo, {r['n_iter_2ranks']} iterations "
          f"(1 rank: {r['n_iter_1rank']})")
    print(f"1 rank x 2 threads:  {r['t_1rank_2threads_s'] * 1e3:.1f} ms")
    print(f"2 ranks x 1 thread:  {r['t_2ranks_1thread_s'] * 1e3:.1f} ms")
    print(f"1 rank x 1 thread:   {r['t_1rank_1thread_s'] * 1e3:.1f} ms")
    print(f"efficiency:          {r['efficiency']:.3f}")
    print(f"speed-up over one thread: {r['speedup_over_1thread']:.3f}")
    print(f"load average (1 min) before / after: {r['load_average']}")
    print(f"all_reduce per iteration: {r['allreduce_bytes_per_iter']} bytes, {r['allreduce_ms']:.3f} ms each")
    if args.save:
        print("saved", save(r))
    return r


def test_distributed_lloyd(benchmark):
    """One 2-rank Gloo Lloyd run (a quarter of the script's rows; spawn and import included)."""
    benchmark.group = "distributed:full"
    info = {}

    def once():
        info.update(run(2, 1, 12500, 64, 64, 20))

    benchmark.pedantic(once, rounds=1, iterations=1)
    benchmark.extra_info.update(shape="N=12500,d=64,k=64,it=20", ranks=2, **info)
    assert info["n_iter"] >= 1


if __name__ == "__main__":
    main()
