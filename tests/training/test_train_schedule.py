"""Pipeline schedules against their closed forms, and the DES against list scheduling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.engine.training.pipeline import replay, simulate
from moesim.engine.training.schedule import build_plan


def _equal(plan, f: float, b: float) -> list[float]:
    """Durations: every forward ``f / v``, every backward ``b / v`` (a stage's total stays f, b)."""
    v = plan.virtual
    return [(f if plan.op_kind[i] == 0 else b) / v for i in range(plan.n_ops)]


@pytest.mark.parametrize("p,m", [(1, 1), (2, 1), (4, 4), (4, 8), (8, 32), (16, 120)])
def test_1f1b_bubble_closed_form(p: int, m: int) -> None:
    plan = build_plan("1f1b", pp=p, micro_batches=m)
    f, b = 1.0, 2.0
    run = simulate(plan, _equal(plan, f, b), [0.0] * plan.n_ops)
    assert run.makespan == pytest.approx((m + p - 1) * (f + b))
    busy = m * (f + b)
    bubble = (run.makespan - busy) / run.makespan
    assert bubble == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("p,m,v", [(2, 4, 2), (4, 8, 2), (4, 12, 3), (8, 16, 4)])
def test_interleaved_bubble_shrinks_by_v(p: int, m: int, v: int) -> None:
    plan = build_plan("interleaved_1f1b", pp=p, micro_batches=m, virtual=v)
    f, b = 1.0, 2.0
    run = simulate(plan, _equal(plan, f, b), [0.0] * plan.n_ops)
    assert run.makespan == pytest.approx(m * (f + b) + (p - 1) * (f + b) / v)


def test_gpipe_equals_1f1b_makespan_with_equal_stages() -> None:
    a = build_plan("gpipe", pp=4, micro_batches=8)
    b = build_plan("1f1b", pp=4, micro_batches=8)
    ra = simulate(a, _equal(a, 1.0, 2.0), [0.0] * a.n_ops)
    rb = simulate(b, _equal(b, 1.0, 2.0), [0.0] * b.n_ops)
    assert ra.makespan == pytest.approx(rb.makespan)


def test_p2p_costs_at_least_the_first_round_trip() -> None:
    p, m, t = 4, 8, 0.1
    plan = build_plan("1f1b", pp=p, micro_batches=m)
    free = simulate(plan, _equal(plan, 1.0, 2.0), [0.0] * plan.n_ops).makespan
    run = simulate(plan, _equal(plan, 1.0, 2.0), [t] * plan.n_ops)
    # micro-batch 0 crosses p-1 boundaries forward and p-1 backward before stage 0 finishes it
    assert run.makespan >= free + 2 * (p - 1) * t - 1e-9
    one = build_plan("1f1b", pp=p, micro_batches=1)
    single = simulate(one, _equal(one, 1.0, 2.0), [t] * one.n_ops)
    assert single.makespan == pytest.approx(p * 3.0 + 2 * (p - 1) * t)


def test_1f1b_in_flight_micro_batches() -> None:
    """Stage s of 1F1B holds at most p - s micro-batches (what the memory model relies on)."""
    from moesim.engine.training.memory import alive_counts

    plan = build_plan("1f1b", pp=4, micro_batches=8)
    peaks = [int(a.sum(axis=1).max()) for a in alive_counts(plan)]
    assert peaks == [4, 3, 2, 1]


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["gpipe", "1f1b", "interleaved_1f1b"]), p=st.integers(1, 6), groups=st.integers(1, 4),
       v=st.integers(2, 3), seed=st.integers(0, 10_000))
def test_des_matches_list_scheduling(kind: str, p: int, groups: int, v: int, seed: int) -> None:
    m = p * groups
    plan = build_plan(kind, pp=p, micro_batches=m, virtual=v if kind == "interleaved_1f1b" else 1)
    rng = np.random.default_rng(seed)
    dur = rng.uniform(0.1, 2.0, plan.n_ops).tolist()
    p2p = rng.uniform(0.0, 0.2, plan.n_ops).tolist()
    a, b = simulate(plan, dur, p2p), replay(plan, dur, p2p)
    assert np.allclose(a.start, b.start) and np.allclose(a.end, b.end)
    # every stage runs its ops back to back or waits: never overlapping, never before a dependency
    for ops in plan.device_ops:
        for (x, _, _), (y, dep, cross) in zip(ops, ops[1:]):
            assert a.start[y] >= a.end[x] - 1e-12
            if dep >= 0:
                assert a.start[y] >= a.end[dep] + (p2p[y] if cross else 0.0) - 1e-12
