"""DualPipe (DeepSeek-V3 technical report, arXiv 2412.19437, sec. 3.2.1): the per-rank op order.

**Placement.** The model is split into ``P`` (even) stages; rank ``r`` holds two of them, stage
``r`` and stage ``P - 1 - r``, so every stage lives on two ranks and parameters count twice.
Half of the ``m`` (even) micro-batches enter at rank 0 and flow ``0 -> P-1`` (direction 0:
stage ``c`` on rank ``c``); the other half enter at rank ``P-1`` and flow back (direction 1:
stage ``c`` on rank ``P-1-c``). Both halves run the whole model.

**Ops.** Forward ``F``, backward for inputs ``B`` and backward for weights ``W`` of one
micro-batch through one stage. A *full* backward is one slot holding a ``B`` and its ``W`` (the
input gradient leaves when the whole chunk is done, as in a plain backward); a *zero-bubble*
backward is a slot with the ``B`` alone and defers its ``W`` to a FIFO queue, popped later into
a slot of its own to fill what would be idle time. An ``F&B`` chunk is one slot running the
forward of one micro-batch and the full backward of another together, so that the all-to-all
(and PP) communication of each hides behind the other's computation (the DES charges it
``max(computation, hideable communication)``, see ``pipeline.py``).

**Order on rank r**, the phases of DeepSeek's open-source reference schedule
(github.com/deepseek-ai/DualPipe, ``DualPipe.step``; written afresh here as moesim slots)
(``h = P/2``, ``q = min(r, P-1-r)`` its distance from the nearer end,
``n = m/2`` micro-batches per direction, ``a`` = the direction in which rank ``r`` is early
(direction 0 on the first half of the ranks), ``b`` = the other one):

1. ``2 (h - q - 1)`` forwards of ``a``;
2. ``q + 1`` times: forward ``a``, forward ``b``;
3. ``h - q - 1`` times: zero-bubble backward ``b``, its ``W``, forward ``b``;
4. ``n - P + q + 1`` times: ``F&B`` (forward ``a``, backward ``b``), ``F&B`` (forward ``b``,
   backward ``a``); the two middle ranks run their first pair as separate ops (a forward, then a
   full backward) to shorten the critical path;
5. ``h - q - 1`` times: full backward ``b``, ``F&B`` (forward ``b``, backward ``a``);
6. ``q + 1`` times: backward ``b``, backward ``a``; the last ``q + 1`` of these ``2 (q + 1)``
   backwards defer their ``W``;
7. ``h - q - 1`` times: the oldest deferred ``W``, zero-bubble backward ``a``;
8. the ``q + 1`` deferred ``W`` left.

Every rank runs ``m`` forwards, ``m`` backwards and ``m`` weight ops (phase 4 needs
``n >= P``: at least ``2 P`` micro-batches). With every op of a kind lasting the same on every
stage, ``F = B = W`` (``B`` here is the input part; the report's ``B`` is the full backward,
``B + W``) and no communication, every rank idles ``(P/2 - 1)(F&B + B_full - 3 W)`` per step,
the report's bubble (its table: 1F1B ``(P - 1)(F + B_full)``, ZB1P ``(P - 1)(F + B_full - 2 W)``);
with other proportions the DES gives this order's own idle time. At most ``P + 1``
micro-batches' activations of one stage are alive on a rank (the report's ``PP + 1``).
"""

from __future__ import annotations

__all__ = ["dualpipe_orders"]

F, B, W = 0, 1, 2

Op = tuple[int, int, int]
"""(kind, micro-batch, model stage)."""


class _Rank:
    """Builds one rank's slots (module doc); each slot is a tuple of ops run together."""

    def __init__(self, rank: int, pp: int, micro_batches: int) -> None:
        self.rank, self.pp, self.n = rank, pp, micro_batches // 2
        self.next = {(F, 0): 0, (F, 1): 0, (B, 0): 0, (B, 1): 0}
        self.deferred: list[Op] = []
        self.slots: list[tuple[Op, ...]] = []

    def _stage(self, d: int) -> int:
        return self.rank if d == 0 else self.pp - 1 - self.rank

    def _take(self, kind: int, d: int) -> tuple[int, int]:
        i = self.next[(kind, d)]
        self.next[(kind, d)] = i + 1
        return d * self.n + i, self._stage(d)

    def fwd(self, d: int) -> tuple[Op, ...]:
        mb, stage = self._take(F, d)
        return ((F, mb, stage),)

    def bwd(self, d: int, *, defer: bool) -> tuple[Op, ...]:
        mb, stage = self._take(B, d)
        if defer:
            self.deferred.append((W, mb, stage))
            return ((B, mb, stage),)
        return (B, mb, stage), (W, mb, stage)

    def weight(self) -> tuple[Op, ...]:
        return (self.deferred.pop(0),)

    def add(self, *slots: tuple[Op, ...]) -> None:
        self.slots.extend(slots)


def _rank_order(rank: int, pp: int, micro_batches: int) -> list[tuple[Op, ...]]:
    """Slots of ``rank`` in execution order (module doc, phases 1-8)."""
    h, n = pp // 2, micro_batches // 2
    q = min(rank, pp - 1 - rank)
    a = 0 if rank < h else 1
    b = 1 - a
    x = _Rank(rank, pp, micro_batches)
    for _ in range(2 * (h - q - 1)):                                    # 1
        x.add(x.fwd(a))
    for _ in range(q + 1):                                              # 2
        x.add(x.fwd(a), x.fwd(b))
    for _ in range(h - q - 1):                                          # 3
        x.add(x.bwd(b, defer=True), x.weight(), x.fwd(b))
    for i in range(n - pp + q + 1):                                     # 4
        if i == 0 and q == h - 1:
            x.add(x.fwd(a))
            x.add(x.bwd(b, defer=False))
        else:
            x.add(x.fwd(a) + x.bwd(b, defer=False))
        x.add(x.fwd(b) + x.bwd(a, defer=False))
    for _ in range(h - q - 1):                                          # 5
        x.add(x.bwd(b, defer=False))
        x.add(x.fwd(b) + x.bwd(a, defer=False))
    for k in range(2 * (q + 1)):                                        # 6
        x.add(x.bwd(b if k % 2 == 0 else a, defer=k >= q + 1))
    for _ in range(h - q - 1):                                          # 7
        x.add(x.weight())
        x.add(x.bwd(a, defer=True))
    for _ in range(q + 1):                                              # 8
        x.add(x.weight())
    assert not x.deferred and all(v == n for v in x.next.values()), "DualPipe order is incomplete"
    return x.slots


def dualpipe_orders(pp: int, micro_batches: int) -> list[list[tuple[Op, ...]]]:
    """Per rank, its slots ``[((kind, micro_batch, stage), ...), ...]`` in execution order.

    Needs ``pp`` even and ``micro_batches`` even and ``>= 2 pp`` (checked by the mesh with
    ConfigErrors naming the fields; here a ValueError).
    """
    if pp % 2 or micro_batches % 2 or micro_batches < 2 * pp:
        raise ValueError(f"dualpipe needs an even pp ({pp}) and an even number of micro-batches >= 2 pp "
                         f"({micro_batches})")
    return [_rank_order(r, pp, micro_batches) for r in range(pp)]
