"""Pipeline schedules: the order of forward / backward ops on every stage, and their dependencies.

A step runs ``m`` micro-batches through ``C`` model chunks. An *op* is the forward (F), the
backward (B) or, for schedules that split the backward, the backward-for-weights (W) of one
micro-batch through one chunk; op ids are ``(kind * m + mb) * C + chunk`` with kind 0 = F,
1 = B, 2 = W (``kinds`` = 2 or 3 kinds per plan). Without W ops, B is the whole backward.

Dependencies: F(mb, c) needs F(mb, c-1); B(mb, c) needs B(mb, c+1), and the last chunk's
B(mb, C-1) needs F(mb, C-1); W(mb, c) needs B(mb, c). An edge between ops on different stages
carries a point-to-point transfer (activations forward, their gradients backward).

Each stage runs a sequence of *slots*; a slot is one op, a full backward split into its B and W
(run back to back, one slot), or (DualPipe's ``F&B`` chunk, a *fused* slot) a forward and a full
backward of two micro-batches run together (see ``pipeline.py`` for its duration).

Orders per stage (``s`` = stage, ``p`` = pp), chunk ``c`` on stage ``c % p`` unless noted:

* ``gpipe``: every forward, then every backward, micro-batches ascending.
* ``1f1b`` (PipeDream-flush): ``min(p - s - 1, m)`` warm-up forwards, then alternate one forward
  and one backward, then the remaining backwards. With equal stage times the step takes
  ``(m + p - 1)(f + b)``: bubble fraction ``(p - 1) / (m + p - 1)``.
* ``interleaved_1f1b`` (Megatron virtual pipeline; ``C = p v``, needs ``m % p == 0``): stage
  ``s`` holds chunks ``s, s + p, ..., s + (v-1) p``; the k-th forward of a stage runs micro-batch
  ``(k // (p v)) p + k % p`` through its local chunk ``(k // p) % v``; the k-th backward the same
  micro-batch through local chunk ``v - 1 - (k // p) % v``. Warm-up
  ``min(2 (p - s - 1) + (v - 1) p, m v)`` forwards, then 1F1B. With equal stage times the bubble
  shrinks to ``(p - 1)(f + b) / v``.
* ``dualpipe`` (DeepSeek-V3; ``C = p`` model stages, 3 kinds): micro-batches ``< m/2`` run stage
  ``c`` on rank ``c``, the others on rank ``p - 1 - c``, so every rank holds two stages; the
  order is in ``dualpipe.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moesim.engine.training.dualpipe import dualpipe_orders

__all__ = ["SCHEDULE_KINDS", "PipelinePlan", "build_plan", "stage_order"]

F, B, W = 0, 1, 2
SCHEDULE_KINDS = ("gpipe", "1f1b", "interleaved_1f1b", "dualpipe")
"""Kinds ``build_plan`` knows; ``ScheduleCfg.kind`` lists exactly these (tested)."""

Entry = tuple[int, int, bool]
"""(op, dependency or -1, whether the dependency lives on another stage)."""


def _one_f_one_b(warmup: int, total: int) -> list[tuple[int, int]]:
    """``(kind, k)`` sequence: ``warmup`` forwards, alternating F/B, then the remaining backwards."""
    ops = [(F, k) for k in range(warmup)]
    f, b = warmup, 0
    while f < total:
        ops.append((F, f))
        f += 1
        ops.append((B, b))
        b += 1
    ops += [(B, k) for k in range(b, total)]
    return ops


def stage_order(kind: str, *, stage: int, pp: int, micro_batches: int, virtual: int = 1) -> list[tuple[int, int, int]]:
    """``[(kind, micro_batch, local_chunk)]`` in execution order on ``stage`` (module doc; not dualpipe)."""
    m, p, v = micro_batches, pp, virtual
    if kind == "gpipe":
        return [(F, i, 0) for i in range(m)] + [(B, i, 0) for i in range(m)]
    if kind == "1f1b":
        return [(k, i, 0) for k, i in _one_f_one_b(min(p - stage - 1, m), m)]
    if kind == "interleaved_1f1b":
        total = m * v
        warm = min(2 * (p - stage - 1) + (v - 1) * p, total)
        out = []
        for k, i in _one_f_one_b(warm, total):
            mb = (i // (p * v)) * p + i % p
            local = (i // p) % v
            out.append((k, mb, local if k == F else v - 1 - local))
        return out
    raise ValueError(f"unknown schedule kind {kind!r}")


@dataclass(frozen=True)
class PipelinePlan:
    """A schedule resolved into op ids (see the module doc).

    Attributes:
        kind, pp, virtual, micro_batches: the schedule.
        chunks: C (model chunks; ``pp x virtual``, or ``pp`` stages for dualpipe).
        kinds: op kinds (2: F, B; 3: F, B, W).
        slots: per stage, its slots in execution order; a slot is a tuple of ``(op, dep, cross)``
            run together (``dep = -1`` for none or when the dependency is in the same slot).
        slot_fused: per stage, per slot: whether it holds a forward and a backward (an F&B chunk,
            whose hideable communication overlaps the computation).
        device_ops: per stage, ``(op, dep, cross)`` in execution order (the slots flattened).
        op_stage, op_chunk, op_mb, op_kind: per op id.
        op_slot: per op id, the index of its slot in a global numbering (stage by stage).
        dep_of: per op id, its dependency (-1 for none).
        position: per op id, its index in its stage's ``device_ops``.
        stage_chunks: per stage, the chunks it holds (their parameters live there).
        grad_ops: per stage, ``(chunk, op)``: the op whose end completes that chunk's gradients
            on that stage (the last B, or W, through it).
    """

    kind: str
    pp: int
    virtual: int
    micro_batches: int
    chunks: int
    kinds: int
    slots: tuple[tuple[tuple[Entry, ...], ...], ...]
    slot_fused: tuple[tuple[bool, ...], ...]
    device_ops: tuple[tuple[Entry, ...], ...]
    op_stage: tuple[int, ...]
    op_chunk: tuple[int, ...]
    op_mb: tuple[int, ...]
    op_kind: tuple[int, ...]
    op_slot: tuple[int, ...]
    dep_of: tuple[int, ...]
    position: tuple[int, ...]
    stage_chunks: tuple[tuple[int, ...], ...]
    grad_ops: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def n_ops(self) -> int:
        """kinds x micro-batches x chunks."""
        return self.kinds * self.micro_batches * self.chunks

    @property
    def n_slots(self) -> int:
        """Slots over all stages."""
        return sum(len(s) for s in self.slots)

    @property
    def fused(self) -> bool:
        """Whether some slot is fused (DualPipe's F&B chunks)."""
        return any(any(f) for f in self.slot_fused)

    @property
    def multi(self) -> bool:
        """Whether some slot holds more than one op."""
        return self.n_ops != self.n_slots

    @cached_property
    def slot_index(self) -> np.ndarray:
        """``op_slot`` as an array."""
        return np.asarray(self.op_slot, dtype=np.int64)

    @cached_property
    def fused_flat(self) -> np.ndarray:
        """``[n_slots]`` bool: ``slot_fused`` in the global slot numbering."""
        return np.fromiter((f for stage in self.slot_fused for f in stage), dtype=bool, count=self.n_slots)

    @cached_property
    def home_stage(self) -> np.ndarray:
        """``[C]`` the first stage holding each chunk: the data-parallel groups of that stage reduce,
        shard and save the chunk's state (DualPipe's two holders of a stage share one group)."""
        return np.array([min(s for s, held in enumerate(self.stage_chunks) if c in held) for c in range(self.chunks)])

    def op_id(self, kind: int, mb: int, chunk: int) -> int:
        """Id of op (kind, micro-batch, chunk)."""
        return (kind * self.micro_batches + mb) * self.chunks + chunk


def _orders(kind: str, pp: int, m: int, virtual: int) -> tuple[int, int, list[list[tuple[tuple[int, int, int], ...]]]]:
    """(chunks, kinds, per stage its slots of ``(kind, mb, chunk)``)."""
    if kind == "dualpipe":
        return pp, 3, [[tuple(slot) for slot in rank] for rank in dualpipe_orders(pp, m)]
    orders = [[((k, mb, local * pp + s),) for k, mb, local in stage_order(kind, stage=s, pp=pp, micro_batches=m,
                                                                          virtual=virtual)] for s in range(pp)]
    return pp * virtual, 2, orders


def build_plan(kind: str, *, pp: int, micro_batches: int, virtual: int = 1) -> PipelinePlan:
    """Resolve ``kind`` into a :class:`PipelinePlan`."""
    m = micro_batches
    c_total, kinds, orders = _orders(kind, pp, m, virtual)
    n = kinds * m * c_total

    def oid(k: int, mb: int, c: int) -> int:
        return (k * m + mb) * c_total + c

    dep = [-1] * n
    for mb in range(m):
        for c in range(c_total):
            if c > 0:
                dep[oid(F, mb, c)] = oid(F, mb, c - 1)
            dep[oid(B, mb, c)] = oid(B, mb, c + 1) if c < c_total - 1 else oid(F, mb, c)
            if kinds == 3:
                dep[oid(W, mb, c)] = oid(B, mb, c)
    stage_of, slot_of, position = [-1] * n, [-1] * n, [0] * n
    n_slot = 0
    for s, order in enumerate(orders):
        pos = 0
        for slot in order:
            for k, mb, c in slot:
                me = oid(k, mb, c)
                assert stage_of[me] < 0, f"{kind}: op {(k, mb, c)} scheduled twice"
                stage_of[me], slot_of[me], position[me] = s, n_slot, pos
                pos += 1
            n_slot += 1
    assert min(stage_of) >= 0, f"{kind}: some ops are never scheduled"
    cross = [d >= 0 and stage_of[d] != stage_of[me] for me, d in enumerate(dep)]
    slots, device_ops, fused = [], [], []
    for order in orders:
        stage_slots = []
        for slot in order:
            ids = [oid(k, mb, c) for k, mb, c in slot]
            stage_slots.append(tuple((me, dep[me] if dep[me] not in ids else -1, cross[me]) for me in ids))
        slots.append(tuple(stage_slots))
        fused.append(tuple(len({k for k, _, _ in slot} & {F, B}) == 2 for slot in order))
        device_ops.append(tuple((me, dep[me], cross[me]) for sl in stage_slots for me, _, _ in sl))
    ids = range(n)
    op_chunk = tuple(i % c_total for i in ids)
    release = kinds - 1                       # the op kind after which a chunk's gradients are done
    grad_ops = []
    for ops in device_ops:
        last: dict[int, int] = {}
        for me, _, _ in ops:
            if me // (c_total * m) == release:
                last[op_chunk[me]] = me
        grad_ops.append(tuple(sorted(last.items())))
    return PipelinePlan(
        kind=kind, pp=pp, virtual=virtual, micro_batches=m, chunks=c_total, kinds=kinds, slots=tuple(slots),
        slot_fused=tuple(fused), device_ops=tuple(device_ops), op_stage=tuple(stage_of), op_chunk=op_chunk,
        op_mb=tuple((i // c_total) % m for i in ids), op_kind=tuple(i // (c_total * m) for i in ids),
        op_slot=tuple(slot_of), dep_of=tuple(dep), position=tuple(position),
        stage_chunks=tuple(tuple(c for c, _ in g) for g in grad_ops), grad_ops=tuple(grad_ops))
