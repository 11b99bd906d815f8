"""The multi-host DeepEP benchmark (``benchmarks/deepep_multinode.py``): its routing is DeepEP's
test routing, and moesim's out-of-sample predictions stay within their recorded errors."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):  # type: ignore[no-untyped-def]
    return load_benchmark("deepep_multinode")


def test_routing_keeps_every_token_inside_its_top_hosts(bench) -> None:  # type: ignore[no-untyped-def]
    topk, src = bench.routing(64, 256, 4, np.random.default_rng(0))
    assert topk.shape == (64 * 256, 8) and np.array_equal(src, np.repeat(np.arange(64), 256))
    hosts = topk // (bench.EXPERTS // 8)
    assert max(len(set(row)) for row in hosts.tolist()) <= 4
    assert all(len(set(row)) == 8 for row in topk.tolist())           # eight distinct experts


def test_ep16_predictions_stay_within_their_recorded_errors(bench) -> None:  # type: ignore[no-untyped-def]
    table = {case: p / m - 1.0 for case, m, p, _ in bench.rows("flow", eps=(16,))}
    assert len(table) == 4
    # recorded in benchmarks/RESULTS.md: normal +0.1 / -1.3 %, low-latency -0.1 / +6.9 %
    assert max(abs(e) for e in table.values()) < 0.1
