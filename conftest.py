"""Repository-root pytest glue: ``pytest --benchmark-only`` with no path runs the benchmarks.

``testpaths = ["tests"]`` (pyproject.toml) keeps plain ``pytest`` / ``make test`` on the tests,
which time nothing. The benchmarks live in ``benchmarks/``; so that ``pytest --benchmark-only``
from the repository root runs them (as ``pytest benchmarks --benchmark-only`` does) instead of
skipping every test, the collection paths become ``benchmarks`` when that option is given and
no path was named on the command line. A named path is always kept as given.
"""
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if not config.getoption("benchmark_only", default=False):
        return
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return
    config.args[:] = [os.path.relpath(BENCHMARKS, str(config.invocation_params.dir))]
    config.args_source = pytest.Config.ArgsSource.ARGS  # the header no longer names testpaths
