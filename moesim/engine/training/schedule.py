"""Pipeline schedules: the order of forward / backward ops on every stage, and their dependencies.

A step runs ``m`` micro-batches through ``C = pp * v`` model chunks; chunk ``c`` lives on stage
``c % pp`` (with ``v = virtual_stages`` chunks per stage, stage ``s`` holds chunks
``s, s + pp, ..., s + (v-1) pp``: Megatron's interleaving). An *op* is the forward (F) or
backward (B) of one micro-batch through one chunk; op ids are ``(kind * m + mb) * C + chunk``
with kind 0 = F, 1 = B.

Dependencies: F(mb, c) needs F(mb, c-1); B(mb, c) needs B(mb, c+1), and the last chunk's
B(mb, C-1) needs F(mb, C-1). An edge between chunks on different stages carries a
point-to-point transfer (activations forward, their gradients backward).

Orders per stage (``s`` = stage, ``p`` = pp):

* ``gpipe``: every forward, then every backward, micro-batches ascending.
* ``1f1b`` (PipeDream-flush): ``min(p - s - 1, m)`` warm-up forwards, then alternate one forward
  and one backward, then the remaining backwards. With equal stage times the step takes
  ``(m + p - 1)(f + b)``: bubble fraction ``(p - 1) / (m + p - 1)``.
* ``interleaved_1f1b`` (Megatron virtual pipeline; needs ``m % p == 0``): the k-th forward of a
  stage runs micro-batch ``(k // (p v)) p + k % p`` through its local chunk ``(k // p) % v``; the
  k-th backward the same micro-batch through local chunk ``v - 1 - (k // p) % v``. Warm-up
  ``min(2 (p - s - 1) + (v - 1) p, m v)`` forwards, then 1F1B. With equal stage times the bubble
  shrinks to ``(p - 1)(f + b) / v``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PipelinePlan", "build_plan", "stage_order"]

F, B = 0, 1


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
    """``[(kind, micro_batch, local_chunk)]`` in execution order on ``stage`` (module doc)."""
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
        chunks: C = pp x virtual.
        device_ops: per stage, ``(op, dep, cross)`` in execution order; ``dep = -1`` for none,
            ``cross`` when the dependency lives on another stage (a p2p transfer).
        op_stage, op_chunk, op_mb, op_kind: per op id.
        dep_of: per op id, its dependency (-1 for none).
        position: per op id, its index in its stage's order.
    """

    kind: str
    pp: int
    virtual: int
    micro_batches: int
    chunks: int
    device_ops: tuple[tuple[tuple[int, int, bool], ...], ...]
    op_stage: tuple[int, ...]
    op_chunk: tuple[int, ...]
    op_mb: tuple[int, ...]
    op_kind: tuple[int, ...]
    dep_of: tuple[int, ...]
    position: tuple[int, ...]

    @property
    def n_ops(self) -> int:
        """2 x micro-batches x chunks."""
        return 2 * self.micro_batches * self.chunks

    def op_id(self, kind: int, mb: int, chunk: int) -> int:
        """Id of op (kind, micro-batch, chunk)."""
        return (kind * self.micro_batches + mb) * self.chunks + chunk


def build_plan(kind: str, *, pp: int, micro_batches: int, virtual: int = 1) -> PipelinePlan:
    """Resolve ``kind`` into a :class:`PipelinePlan`."""
    m, c_total = micro_batches, pp * virtual
    n = 2 * m * c_total

    def oid(k: int, mb: int, c: int) -> int:
        return (k * m + mb) * c_total + c

    dep = [-1] * n
    for mb in range(m):
        for c in range(c_total):
            if c > 0:
                dep[oid(F, mb, c)] = oid(F, mb, c - 1)
            dep[oid(B, mb, c)] = oid(B, mb, c + 1) if c < c_total - 1 else oid(F, mb, c)
    stage_of = [c % pp for c in range(c_total)]
    device_ops, position = [], [0] * n
    for s in range(pp):
        ops = []
        for pos, (k, mb, local) in enumerate(stage_order(kind, stage=s, pp=pp, micro_batches=m, virtual=virtual)):
            me = oid(k, mb, local * pp + s)
            d = dep[me]
            ops.append((me, d, d >= 0 and stage_of[d % c_total] != s))
            position[me] = pos
        device_ops.append(tuple(ops))
    ids = range(n)
    return PipelinePlan(
        kind=kind, pp=pp, virtual=virtual, micro_batches=m, chunks=c_total, device_ops=tuple(device_ops),
        op_stage=tuple(stage_of[i % c_total] for i in ids), op_chunk=tuple(i % c_total for i in ids),
        op_mb=tuple((i // c_total) % m for i in ids), op_kind=tuple(i // (c_total * m) for i in ids),
        dep_of=tuple(dep), position=tuple(position))
