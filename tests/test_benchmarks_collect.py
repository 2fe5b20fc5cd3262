"""The benchmark commands find the benchmarks; the test command times none.

- `pytest benchmarks --benchmark-only` (README, `make bench`): pytest only collects test_*.py by
  default; pyproject.toml adds bench_*.py. Without that line the command ran nothing and exited
  with "no tests collected".
- `pytest --benchmark-only` from the repository root, no path: the root conftest.py runs
  benchmarks/ instead of the testpaths (which would all be skipped).
- `pytest` / `make test`, no path: testpaths = ["tests"], no benchmark.
"""
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "benchmarks", "bench_*.py")))


def _collect(*args):
    out = subprocess.run([sys.executable, "-m", "pytest", *args, "--collect-only", "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if "::" in line], out.stdout


def _assert_every_benchmark(ids, stdout):
    assert MODULES
    for name in MODULES:
        assert any(line.startswith(f"benchmarks/{name}::") for line in ids), (name, stdout[-2000:])


def test_every_benchmark_module_is_collected():
    ids, stdout = _collect("benchmarks")
    _assert_every_benchmark(ids, stdout)


def test_benchmark_only_from_the_root_runs_the_benchmarks_and_plain_pytest_does_not():
    ids, stdout = _collect("--benchmark-only")
    _assert_every_benchmark(ids, stdout)
    assert all(line.startswith("benchmarks/") for line in ids), stdout[-2000:]
    ids, stdout = _collect()
    assert ids and all(line.startswith("tests/") for line in ids), stdout[-2000:]
    ids, _ = _collect("--benchmark-only", "tests/test_benchmarks_collect.py")  # a named path is kept
    assert ids and all(line.startswith("tests/test_benchmarks_collect.py::") for line in ids)
