"""pytest-benchmark glue: ``pytest benchmarks --benchmark-only``.

Each bench_<op>.py exposes ``CASES`` (see common.py); ``bench_cases`` turns them
into parametrised tests grouped as ``<op>:<mode>``, one per provider, skipping
providers that are not available on the benchmark device.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from common import backend_scope, bench_device, provider_available, sync  # noqa: E402


def bench_params(cases):
    """pytest params (case, provider) for the cases meant for the benchmark device."""
    dev = bench_device()
    out = []
    for case in cases:
        if dev.type not in case.devices:
            continue
        for prov in case.providers:
            out.append(pytest.param(case, prov, id=f"{case.mode}-{case.shape}-{prov}"))
    return out


@pytest.fixture
def run_case(benchmark):
    """run_case(case, provider): time ``case.run`` for one provider."""

    def _run(case, provider):
        dev = bench_device()
        if not provider_available(provider, dev):
            pytest.skip(f"provider {provider} not available on {dev.type}")
        benchmark.group = case.group
        benchmark.extra_info.update(shape=case.shape, provider=provider, flops=case.flops, bytes=case.bytes)
        inputs = case.make(dev)
        with backend_scope(provider):
            case.run(provider, inputs)  # warm-up (compiles Triton / torch.compile)
            sync(dev)

            def once():
                case.run(provider, inputs)
                sync(dev)

            benchmark.pedantic(once, rounds=5 if dev.type == "cpu" else 20, iterations=1, warmup_rounds=1)

    return _run
