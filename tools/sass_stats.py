"""Static SASS statistics of the Triton kernels for sm_90a (H100/H200), without a GPU.

Each case compiles one kernel with the launch parameters its wrapper uses on a GPU
(float32 inputs; unit strides specialised and pointers, widths and row strides marked
divisible by 16, as Triton does at launch for contiguous tensors of such widths) and
prints the registers, spilled bytes and shared memory, then one line per loop (a
backward branch) with the instructions of its body, innermost loops first:

    SHFL   cross-lane shuffles (reductions across lanes)     BAR     barriers
    LDG/STG global loads/stores   REDG/ATOMG atomics (REDG: no return value)
    MEMBAR memory fences           LDL/STL spill traffic     FFMA/FADD/FMUL  float math
    HGMMA  tensor-core (wgmma) ops

Counts are per thread of one trip: multiply by the trip count (from the shapes) and by
the number of warps to compare designs. It is a model, not a timing: it shows, for
example, cross-lane sums inside a d loop and the fence before every Triton atomic of
``sem="acq_rel"`` (Triton's default).

    python tools/sass_stats.py [--only NAME ...] [--json]

Run it without TRITON_INTERPRET=1 (interpreted kernels cannot be compiled).

Needs Triton's CUDA backend tools (ptxas, cuobjdump: shipped with the triton wheel);
no CUDA device.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from clustr_fast.kernels import certified_radius as _radius  # noqa: E402
from clustr_fast.kernels._common import split_launch  # noqa: E402
from clustr_fast.kernels import kmeans as _kmeans  # noqa: E402
from clustr_fast.kernels import magnet_loss as _magnet  # noqa: E402
from clustr_fast.kernels import magnet_loss_batch as _batch  # noqa: E402
from clustr_fast.kernels import soft_cluster_logits as _soft  # noqa: E402

TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
TARGET = GPUTarget("cuda", 90, 32)
SHOWN = ("SHFL", "BAR", "LDG", "STG", "REDG", "ATOMG", "MEMBAR", "LDL", "STL", "FFMA", "FADD", "FMUL", "HGMMA")


@dataclass
class KernelCase:
    name: str
    kernel: object  # a triton.JITFunction
    types: dict  # non-constexpr arguments that are not i32: pointers and float scalars
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 3
    unit: tuple = ()  # integer arguments equal to 1 at launch (contiguous strides)
    note: str = ""
    extra: dict = field(default_factory=dict)


def _signature(case: KernelCase) -> tuple[dict, dict]:
    sig, const = {}, dict(case.constexprs)
    for p in case.kernel.params:
        if p.is_constexpr or p.name in case.unit:
            sig[p.name] = "constexpr"
            if p.name in case.unit:
                const[p.name] = 1
        else:
            sig[p.name] = case.types.get(p.name, "i32")
    return sig, const


DIV16 = ("D", "D_FEAT", "sxn", "smc", "scn", "sfn")  # multiples of 16 in the benchmark shapes


def compile_case(case: KernelCase):
    sig, const = _signature(case)
    # Triton marks pointers and integers divisible by 16 at launch; the hint enables vector loads
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(case.kernel.params)
             if sig[p.name].startswith("*") or (p.name in DIV16 and sig[p.name] == "i32")}
    return triton.compile(ASTSource(case.kernel, sig, const, attrs), target=TARGET,
                          options={"num_warps": case.num_warps, "num_stages": case.num_stages})


_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(.*)")


def analyse(case: KernelCase) -> dict:
    """Registers, spills, shared memory, whole-kernel and per-loop instruction counts."""
    k = compile_case(case)
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = os.path.join(tmp, "k.cubin"), os.path.join(tmp, "k.ptx")
        with open(cubin, "wb") as fh:
            fh.write(k.asm["cubin"])
        with open(ptx, "w") as fh:
            fh.write(k.asm["ptx"])
        sass = subprocess.run([os.path.join(TOOLS, "cuobjdump"), "-sass", cubin],
                              capture_output=True, text=True, check=True).stdout
        info = subprocess.run([os.path.join(TOOLS, "ptxas"), "-v", "-arch=sm_90a", ptx, "-o", os.devnull],
                              capture_output=True, text=True, check=True).stderr
    ins = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(_LINE.match, sass.splitlines()) if m]
    loops = []
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr:
            lo = int(target.group(1), 16)
            loops.append((lo, addr, collections.Counter(o for a, o, _ in ins if lo <= a <= addr)))
    loops.sort(key=lambda t: t[1] - t[0])
    return dict(regs=int(re.search(r"Used (\d+) registers", info).group(1)),
                spill=int(re.search(r"(\d+) bytes spill stores", info).group(1)),
                smem=k.metadata.shared, total=collections.Counter(op for _, op, _ in ins), loops=loops)


def _counts(c: collections.Counter) -> str:
    return " ".join(f"{k}={c[k]}" for k in SHOWN if c[k])


def cases() -> list[KernelCase]:
    f32 = tl.float32
    pp_tile = _kmeans.pp_eval_tile(8, _kmeans.torch.float32, False)
    soft_types = dict(X="*fp32", MU="*fp32", CN="*fp32", CLS="*i64", OUT="*fp32", IDX="*i64", ZBUF="*fp32",
                      scale="fp32")
    fwd_meta, fwd_launch = split_launch(_soft.FWD_GPU_FP32)
    assign_meta, assign_launch = split_launch(_kmeans.ASSIGN_GPU_FP32)
    radius_meta, radius_launch = split_launch(_radius.GPU_TILE_FP32)
    bwd_meta, bwd_launch = split_launch(_soft.BWD_GPU)
    batch_meta, batch_launch = _batch._config(12)
    soft_fwd = dict(ACC=f32, DOT_PREC="tf32x3", CAST_BF16=False, ALL=False, RECOMPUTE=False, BLOCK_M=64, DP=32,
                    INIT=_soft._INIT, NONE=_soft._NONE, **fwd_meta)
    return [
        KernelCase("kmeans_plusplus.eval", _kmeans._pp_eval_kernel,
                   dict(X="*fp32", CAND="*i64", CLOSEST="*fp32", W="*fp32", DC="*fp32", PART="*fp64", BSTART="*i64",
                        BEND="*i64", BGROUP="*i64"),
                   dict(HAS_W=False, ACC=f32, TP=8, SUB=pp_tile[0], BLOCK_D=pp_tile[1], **_kmeans.PP_EVAL_LOOP),
                   unit=("sxd",),
                   note="1M x 128, k=1024: T=8 candidates; one trip of the outer loop per SUB rows"),
        KernelCase("kmeans.assign", _kmeans._assign_dense_kernel,
                   dict(X="*fp32", C="*fp32", CN="*fp32", LAB="*i64", SQ="*fp32"),
                   dict(ACC=f32, DOT_PREC="tf32x3", CAST_BF16=False, USE_DOT=True, **assign_meta), **assign_launch,
                   unit=("sxd", "scd"), note='"highest"'),
        KernelCase("kmeans.assign_grouped", _kmeans._assign_grouped_kernel,
                   dict(X="*fp32", C="*fp32", GRP="*i64", LAB="*i64", SQ="*fp32"),
                   dict(ACC=f32, BLOCK_M=64, BLOCK_D=32), unit=("sxd", "scd"),
                   note="per-class refresh: one trip of the inner loop per (center, d chunk)"),
        KernelCase("kmeans.update_atomic", _kmeans._update_atomic_kernel,
                   dict(X="*fp32", LAB="*i64", W="*fp32", SUMS="*fp32", CNT="*i32", WSUM="*fp32"),
                   dict(HAS_W=False, ACC=f32, BLOCK_M=64, BLOCK_D=64), unit=("sxd",)),
        KernelCase("soft_cluster_logits.fwd", _soft._soft_fwd_kernel, soft_types, soft_fwd, **fwd_launch,
                   unit=("sxd", "smd"), note='"highest", D=20 (DP=32)'),
        KernelCase("soft_cluster_logits.fwd_recompute", _soft._soft_fwd_kernel, soft_types,
                   dict(soft_fwd, CAST_BF16=True, RECOMPUTE=True), **fwd_launch,
                   unit=("sxd", "smd"), note='"medium": bf16 products and the recompute of the selected distances'),
        KernelCase("soft_cluster_logits.bwd", _soft._soft_bwd_kernel,
                   dict(G="*fp32", OUT="*fp32", IDX="*i64", X="*fp32", MU="*fp32", CLS="*i64", GX="*fp32",
                        GMU="*fp32", ABUF="*fp32", scale="fp32"),
                   dict(ACC=f32, ATOMIC_GMU=True, BLOCK_M=64, DP=32, **bwd_meta), **bwd_launch, unit=("sxd", "smd"),
                   note="grad_mu by atomics"),
        KernelCase("soft_cluster_logits.bwd_dense", _soft._soft_bwd_kernel,
                   dict(G="*fp32", OUT="*fp32", IDX="*i64", X="*fp32", MU="*fp32", CLS="*i64", GX="*fp32",
                        GMU="*fp32", ABUF="*fp32", scale="fp32"),
                   dict(ACC=f32, ATOMIC_GMU=False, BLOCK_M=64, DP=32, **bwd_meta), **bwd_launch, unit=("sxd", "smd"),
                   note="grad_mu by dense products after the kernel"),
        KernelCase("magnet_loss.fwd", _magnet._magnet_fwd_kernel,
                   dict(F="*fp32", MU="*fp32", CN="*fp32", ASSIGN="*i64", CLS="*i64", VALID="*i64", VAR="*fp32",
                        LOSS="*fp32", STATS="*fp32", alpha="fp32", log_eps="fp32"),
                   dict(HAS_VALID=False, USE_EPS=True, ACC=f32, DOT_PREC="tf32x3", BLOCK_M=64, BLOCK_C=64,
                        BLOCK_D=32), unit=("sfd", "smd"), note="global form, C tiles of 64"),
        KernelCase("magnet_loss_batch.means", _batch._batch_means_kernel,
                   dict(F="*fp32", IDS="*i64", MU="*fp32", DPART="*fp32"), dict(ACC=f32, **batch_meta),
                   **batch_launch, unit=("sfd",), note="12 x 20 x 512 batch: a program per d chunk"),
        KernelCase("magnet_loss_batch.loss", _batch._batch_loss_kernel,
                   dict(IDS="*i64", CLS="*i64", VAR="*fp32", W="*fp32", LOSS="*fp32", TOTAL="*fp32",
                        DPART="*fp32", PS="*fp32", RS="*fp32", COLS="*fp32", var_value="fp32", weight="fp32",
                        alpha="fp32", log_eps="fp32"),
                   dict(VAR_MODE=0, HAS_W=False, USE_EPS=True, WITH_GRAD=True, ACC=f32, BM=batch_meta["BM"],
                        BN=batch_meta["BN"], BCH=16), num_warps=8, note="one program"),
        KernelCase("magnet_loss_batch.grad", _batch._batch_grad_kernel,
                   dict(F="*fp32", IDS="*i64", GRAD="*fp32", MU="*fp32", PS="*fp32", RS="*fp32", COLS="*fp32"),
                   dict(ACC=f32, **batch_meta), **batch_launch, unit=("sfd",), note="a program per d chunk"),
        KernelCase("certified_radius", _radius._radius_kernel,
                   dict(X="*fp32", MU="*fp32", CLS="*i64", GAP="*fp32", OUT="*fp32", lip2="fp32"),
                   dict(MODE=0, ACC=f32, NONE=_radius._NONE, **radius_meta), **radius_launch,
                   unit=("sxd", "smd")),
    ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="case names (prefixes)")
    ap.add_argument("--json", action="store_true", help="one JSON object: name -> counts (for tests)")
    args = ap.parse_args(argv)
    found = {}
    for case in cases():
        if args.only and not any(case.name.startswith(p) for p in args.only):
            continue
        r = analyse(case)
        if args.json:
            found[case.name] = dict(regs=r["regs"], spill=r["spill"], smem=r["smem"], total=dict(r["total"]),
                                    loops=[dict(body) for _, _, body in r["loops"]])
            continue
        print(f"{case.name}: {r['regs']} registers, {r['spill']} B spilled, {r['smem']} B shared, "
              f"{case.num_warps} warps" + (f"  ({case.note})" if case.note else ""))
        print(f"  whole kernel: {sum(r['total'].values())} instructions  {_counts(r['total'])}")
        for lo, hi, body in r["loops"]:
            print(f"  loop {lo:#07x}-{hi:#07x}: {sum(body.values())} instructions  {_counts(body)}")
    if args.json:
        print(json.dumps(found))


if __name__ == "__main__":
    main()
