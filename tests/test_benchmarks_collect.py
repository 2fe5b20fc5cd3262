"""`pytest benchmarks --benchmark-only` (README, `make bench`) must find the benchmarks.

pytest only collects test_*.py by default; pyproject.toml adds bench_*.py. Without that line the
command ran nothing and exited with "no tests collected".
"""
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_benchmark_module_is_collected():
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0, out.stdout + out.stderr
    ids = [line for line in out.stdout.splitlines() if "::test_" in line]
    modules = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "benchmarks", "bench_*.py")))
    assert modules
    for name in modules:
        assert any(line.startswith(f"benchmarks/{name}::") for line in ids), (name, out.stdout[-2000:])
