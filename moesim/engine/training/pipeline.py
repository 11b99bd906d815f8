"""Run one step's pipeline: a SimPy process per stage, one timeout event per slot (stage op).

Semantics (both runners below implement exactly this): every stage executes its slots in the
schedule's order; a slot starts when the stage is free *and* the dependencies of its ops have
finished and, across stages, their point-to-point transfers have arrived (``dep_end + p2p[op]``);
it then occupies the stage for its duration, and all its ops end together. Transfers are
asynchronous: they never occupy a stage.

A slot lasts the sum of its ops' ``dur``, except a *fused* slot (DualPipe's ``F&B`` chunk: a
forward and a full backward of two micro-batches), which runs the computation of its ops on the
compute stream and their hideable communication (``hide[op]`` of ``dur[op]``: the MoE dispatch
/ combine all-to-all) on a communication stream, so it lasts ``max(sum(dur - hide), sum(hide))``:
the communication costs nothing while it is shorter than the computation it pairs with.

``simulate`` is the discrete-event run (the engine's record of a step). ``replay`` computes the
same start / end times by list scheduling without SimPy; the engine uses it for counterfactual
steps (no stragglers, perfectly balanced experts) that split the step time into causes, and the
tests use it to check the DES. ``exposed_hide`` says how much of each op's ``hide`` a step exposed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import simpy

from moesim.engine.training.schedule import Entry, PipelinePlan

__all__ = ["PipelineRun", "exposed_hide", "replay", "simulate", "slot_durations"]


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


def _comm_comp(plan: PipelinePlan, d: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([n_slots] hideable communication, [n_slots] the rest)`` seconds of every slot."""
    comm = np.bincount(plan.slot_index, weights=h, minlength=plan.n_slots)
    comp = np.bincount(plan.slot_index, weights=d - h, minlength=plan.n_slots)
    return comm, comp


def slot_durations(plan: PipelinePlan, dur: Sequence[float], hide: Sequence[float] | None = None) -> list[float]:
    """``[n_slots]`` seconds of every slot (module doc), in the global slot numbering."""
    d = np.asarray(dur, dtype=np.float64)
    if hide is None:
        return np.bincount(plan.slot_index, weights=d, minlength=plan.n_slots).tolist()
    comm, comp = _comm_comp(plan, d, np.asarray(hide, dtype=np.float64))
    return np.where(plan.fused_flat, np.maximum(comp, comm), comp + comm).tolist()


def simulate(plan: PipelinePlan, dur: Sequence[float], p2p: Sequence[float],
             hide: Sequence[float] | None = None) -> PipelineRun:
    """Discrete-event run of one step (module doc). ``dur``, ``p2p``, ``hide``: per op id, seconds."""
    env = simpy.Environment()
    n = plan.n_ops
    sdur = slot_durations(plan, dur, hide) if plan.multi else None
    finished = [False] * n
    waiting: dict[int, simpy.Event] = {}     # events only for dependencies someone waits on
    start, end = [0.0] * n, [0.0] * n
    counter = [0]
    timeout = env.timeout

    def stage(slots: tuple[tuple[Entry, ...], ...], first: int):  # noqa: ANN202 - SimPy process generator
        for g, slot in enumerate(slots, first):
            ready = 0.0
            for me, dep, cross in slot:
                if dep >= 0:
                    if not finished[dep]:
                        ev = waiting[dep] = env.event()
                        counter[0] += 1
                        yield ev
                    r = end[dep] + p2p[me] if cross else end[dep]
                    if r > ready:
                        ready = r
            now = env.now
            t0 = ready if ready > now else now
            t1 = t0 + (sdur[g] if sdur is not None else dur[slot[0][0]])
            for me, _, _ in slot:
                start[me], end[me] = t0, t1
            counter[0] += 1
            yield timeout(t1 - now)
            for me, _, _ in slot:
                finished[me] = True
                ev = waiting.pop(me, None)
                if ev is not None:
                    ev.succeed()

    first = 0
    for slots in plan.slots:
        env.process(stage(slots, first))
        first += len(slots)
    env.run()
    if not all(finished):
        raise RuntimeError(f"pipeline schedule {plan.kind!r} deadlocked")  # a schedule bug, not user input
    return _result(plan, start, end, counter[0])


def replay(plan: PipelinePlan, dur: Sequence[float], p2p: Sequence[float],
           hide: Sequence[float] | None = None) -> PipelineRun:
    """The same times as ``simulate`` by list scheduling (no SimPy; module doc)."""
    n = plan.n_ops
    start, end = [0.0] * n, [0.0] * n
    finished = [False] * n
    free = [0.0] * plan.pp
    ptr = [0] * plan.pp
    sdur = slot_durations(plan, dur, hide) if plan.multi else None
    first = np.cumsum([0] + [len(s) for s in plan.slots]).tolist()
    left = plan.n_slots
    while left:
        progressed = False
        for s, slots in enumerate(plan.slots):
            i, t = ptr[s], free[s]
            while i < len(slots):
                slot = slots[i]
                blocked = False
                for me, dep, cross in slot:
                    if dep >= 0:
                        if not finished[dep]:
                            blocked = True
                            break
                        ready = end[dep] + p2p[me] if cross else end[dep]
                        if ready > t:
                            t = ready
                if blocked:
                    break
                t1 = t + (sdur[first[s] + i] if sdur is not None else dur[slot[0][0]])
                for me, _, _ in slot:
                    start[me], end[me] = t, t1
                    finished[me] = True
                t = t1
                i += 1
            if i != ptr[s]:
                left -= i - ptr[s]
                ptr[s], free[s] = i, t
                progressed = True
        if not progressed:
            raise RuntimeError(f"pipeline schedule {plan.kind!r} deadlocked")
    return _result(plan, start, end, 0)


def exposed_hide(plan: PipelinePlan, dur: np.ndarray, hide: np.ndarray) -> np.ndarray:
    """Per op, the seconds of its ``hide`` that its slot exposed: all of it outside fused slots;
    in a fused slot ``max(0, comm - computation)`` shared in proportion to ``hide`` (arrays
    flattened by op id). The slot's duration is then its ops' ``dur - hide + exposed``."""
    h = np.asarray(hide, dtype=np.float64).ravel()
    if not plan.fused:
        return h.copy()
    comm, comp = _comm_comp(plan, np.asarray(dur, dtype=np.float64).ravel(), h)
    slot = plan.slot_index
    exposed = np.where(plan.fused_flat, np.maximum(comm - comp, 0.0), comm)
    share = np.divide(h, comm[slot], out=np.zeros_like(h), where=comm[slot] > 0)
    return share * exposed[slot]


def _result(plan: PipelinePlan, start: list[float], end: list[float], events: int) -> PipelineRun:
    stage_end = [end[ops[-1][0]] if ops else 0.0 for ops in plan.device_ops]
    return PipelineRun(start=start, end=end, stage_end=stage_end, makespan=max(stage_end), events=events)
