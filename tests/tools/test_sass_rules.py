"""Rules for the Triton kernels, checked on their sm_90a machine code (no GPU needed).

``tools/sass_stats.py`` compiles the kernels with their GPU launch parameters (in a
subprocess: the tests run Triton under the interpreter, whose kernels cannot be compiled).
These tests keep three findings from coming back: fenced atomics, cross-lane sums inside
the d loops of the distance kernels, and register spills in the tuned kernels.
"""
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
if not os.path.exists(os.path.join(TOOLS, "cuobjdump")):
    pytest.skip("Triton's CUDA tools (ptxas, cuobjdump) are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def sass():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sass_stats.py"), "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["kmeans.update_atomic", "soft_cluster_logits.bwd"])
def test_atomics_are_relaxed(sass, name):
    """sem="acq_rel" (Triton's default) puts a MEMBAR before every atomic element."""
    total = sass[name]["total"]
    assert total.get("REDG", 0) > 0, "the kernel no longer has atomics: update this test"
    assert total.get("MEMBAR", 0) == 0 and total.get("ATOMG", 0) == 0


@pytest.mark.parametrize("name", ["kmeans_plusplus.eval", "certified_radius", "kmeans.assign_grouped",
                                  "soft_cluster_logits.bwd"])
def test_distance_loops_do_not_shuffle(sass, name):
    """The innermost loop (over d chunks) accumulates squares; the sum over d comes after it."""
    innermost = sass[name]["loops"][0]
    assert innermost.get("FFMA", 0) > 0 and innermost.get("SHFL", 0) == 0


@pytest.mark.parametrize("name", ["kmeans_plusplus.eval", "certified_radius", "kmeans.assign_grouped",
                                  "soft_cluster_logits.fwd", "soft_cluster_logits.fwd_recompute",
                                  "soft_cluster_logits.bwd", "soft_cluster_logits.bwd_dense", "magnet_loss.fwd",
                                  "magnet_loss_batch.means", "magnet_loss_batch.loss", "magnet_loss_batch.grad"])
def test_no_spills(sass, name):
    assert sass[name]["spill"] == 0
