"""Smoke test of tools/host_overhead.py: one timed row per public call, no error cells."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_host_overhead_script_times_every_call():
    """tools/host_overhead.py prints one timed row per call, no error cells (cpu backend, few reps)."""
    out = subprocess.run([sys.executable, os.path.join("tools", "host_overhead.py"), "--device", "cpu",
                          "--reps", "3", "--backends", "cpu"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| call")]
    assert len(rows) == 16, out.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert float(cells[1]) > 0, row  # microseconds on the cpu backend
        if not cells[0].startswith("floor"):
            assert float(cells[2]) > 0, row  # over the trivial autograd.Function
