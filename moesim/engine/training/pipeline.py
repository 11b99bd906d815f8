"""Run one step's pipeline: a SimPy process per stage, one timeout event per stage op.

Semantics (both runners below implement exactly this): every stage executes its ops in the
schedule's order; an op starts when the stage is free *and* its dependency has finished and,
across stages, its point-to-point transfer has arrived (``dep_end + p2p[op]``); it then occupies
the stage for ``dur[op]`` seconds. Transfers are asynchronous: they never occupy a stage.

``simulate`` is the discrete-event run (the engine's record of a step). ``replay`` computes the
same start / end times by list scheduling without SimPy; the engine uses it for counterfactual
steps (no stragglers, perfectly balanced experts) that split the step time into causes, and the
tests use it to check the DES.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import simpy

from moesim.engine.training.schedule import PipelinePlan

__all__ = ["PipelineRun", "replay", "simulate"]


@dataclass(frozen=True)
class PipelineRun:
    """Times of one step's ops (seconds from the step start).

    start, end: per op id; stage_end: per stage, when its last op ends; makespan = max of those;
    events: SimPy events processed (0 for ``replay``).
    """

    start: list[float]
    end: list[float]
    stage_end: list[float]
    makespan: float
    events: int


def simulate(plan: PipelinePlan, dur: Sequence[float], p2p: Sequence[float]) -> PipelineRun:
    """Discrete-event run of one step (module doc). ``dur``, ``p2p``: per op id, seconds."""
    env = simpy.Environment()
    n = plan.n_ops
    finished = [False] * n
    waiting: dict[int, simpy.Event] = {}     # events only for dependencies someone waits on
    start, end = [0.0] * n, [0.0] * n
    counter = [0]
    timeout = env.timeout

    def stage(ops: tuple[tuple[int, int, bool], ...]):  # noqa: ANN202 - SimPy process generator
        for me, dep, cross in ops:
            ready = 0.0
            if dep >= 0:
                if not finished[dep]:
                    ev = waiting[dep] = env.event()
                    counter[0] += 1
                    yield ev
                ready = end[dep] + p2p[me] if cross else end[dep]
            now = env.now
            t0 = ready if ready > now else now
            t1 = t0 + dur[me]
            start[me], end[me] = t0, t1
            counter[0] += 1
            yield timeout(t1 - now)
            finished[me] = True
            ev = waiting.pop(me, None)
            if ev is not None:
                ev.succeed()

    for ops in plan.device_ops:
        env.process(stage(ops))
    env.run()
    if not all(finished):
        raise RuntimeError(f"pipeline schedule {plan.kind!r} deadlocked")  # a schedule bug, not user input
    return _result(plan, start, end, counter[0])


def replay(plan: PipelinePlan, dur: Sequence[float], p2p: Sequence[float]) -> PipelineRun:
    """The same times as ``simulate`` by list scheduling (no SimPy; module doc)."""
    n = plan.n_ops
    start, end = [0.0] * n, [0.0] * n
    finished = [False] * n
    free = [0.0] * plan.pp
    ptr = [0] * plan.pp
    left = n
    while left:
        progressed = False
        for s, ops in enumerate(plan.device_ops):
            i, t = ptr[s], free[s]
            while i < len(ops):
                me, dep, cross = ops[i]
                if dep >= 0:
                    if not finished[dep]:
                        break
                    ready = end[dep] + p2p[me] if cross else end[dep]
                    if ready > t:
                        t = ready
                start[me] = t
                t += dur[me]
                end[me] = t
                finished[me] = True
                i += 1
            if i != ptr[s]:
                left -= i - ptr[s]
                ptr[s], free[s] = i, t
                progressed = True
        if not progressed:
            raise RuntimeError(f"pipeline schedule {plan.kind!r} deadlocked")
    return _result(plan, start, end, 0)


def _result(plan: PipelinePlan, start: list[float], end: list[float], events: int) -> PipelineRun:
    stage_end = [end[ops[-1][0]] if ops else 0.0 for ops in plan.device_ops]
    return PipelineRun(start=start, end=end, stage_end=stage_end, makespan=max(stage_end), events=events)
