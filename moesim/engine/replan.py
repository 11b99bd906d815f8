"""Periodic re-placement of experts from an EMA of observed loads, with migration cost and staleness.

Every ``interval_s`` the replica turns the expert loads it routed since the last plan into
per-layer shares, folds them into an exponential moving average, and runs the placement policy.
The new plan goes into force ``delay_s`` later (the statistics it used are that stale by then):
the replica pauses while the expert weights that changed rank are copied, then uses the new
placement. With the flow network model the copies are DES flows (``LiveFlows``): they share links
max-min fairly with whatever else is in flight (another replica's migration over the same spine),
and the pause lasts until the last byte lands; otherwise one batch of transfers over the replica's
GPUs is costed by the collective model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from moesim.engine.moe_layer import MoeShape
from moesim.engine.moe_pool import MoeRuntime, MoeStats
from moesim.network.collectives import CollectiveCost
from moesim.policies.placement import Placement

if TYPE_CHECKING:
    import simpy

    from moesim.engine.live_flows import LiveFlows

__all__ = ["Migration", "Replanner", "migration_bytes"]


@dataclass(frozen=True)
class Migration:
    """One placement change: when it took effect, bytes copied, and the pause it cost."""

    time_s: float
    bytes: float
    pause_s: float


def migration_bytes(old: Placement, new: Placement, shape: MoeShape) -> np.ndarray:
    """``float64[G, G]`` weight bytes to copy so every rank holds the experts ``new`` gives it.

    An expert that a rank gains is copied from the lowest rank that held it under ``old``; each
    GPU of the source rank sends its expert-TP shard to its peer in the destination rank.
    """
    etp = shape.expert_tp
    g = len(shape.gpus)
    out = np.zeros((g, g))
    spg_old, spg_new = old.slots_per_gpu, new.slots_per_gpu
    for layer in range(new.n_layers):
        held_old = [set(old.phy2log[layer, r * spg_old:(r + 1) * spg_old].tolist()) for r in range(old.n_gpus)]
        for r in range(new.n_gpus):
            for e in set(new.phy2log[layer, r * spg_new:(r + 1) * spg_new].tolist()) - held_old[r] - {-1}:
                src = next(q for q in range(old.n_gpus) if e in held_old[q])
                for k in range(etp):
                    out[src * etp + k, r * etp + k] += shape.expert_bytes_per_gpu
    return out


@dataclass
class Replanner:
    """Re-plans one replica's placement; ``due``/``apply`` are called between passes."""

    interval_s: float
    delay_s: float
    ema_decay: float
    planner: Callable[[np.ndarray], Placement]
    moe: MoeRuntime
    collectives: CollectiveCost
    live: LiveFlows | None = None
    """Run migrations as DES flows on this network (None: cost them with ``collectives``)."""
    plan_due_s: float = field(init=False)
    next_due_s: float = field(init=False)
    migrations: list[Migration] = field(default_factory=list)
    replans: int = 0
    _ema: np.ndarray | None = None
    _pending: list[tuple[float, Placement]] = field(default_factory=list)
    _in_flight: list[tuple[int, simpy.Event]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.plan_due_s = self.next_due_s = self.interval_s

    def due(self, now_s: float) -> bool:
        """True when a plan should be computed or a pending one put in force."""
        return now_s >= self.next_due_s

    def apply(self, now_s: float, stats: MoeStats | None) -> float:
        """Do what is due at ``now_s``; returns the pause (s) for weight migration."""
        pause = 0.0
        due = [p for t, p in self._pending if t <= now_s]
        if due:  # the newest due plan supersedes older ones (delay may exceed the interval)
            pause += self._migrate(now_s, due[-1])
            self._pending = [(t, p) for t, p in self._pending if t > now_s]
        if now_s >= self.plan_due_s:
            placement = self._plan(stats)
            if placement is not None:
                if self.delay_s > 0:
                    self._pending.append((now_s + self.delay_s, placement))
                else:
                    pause += self._migrate(now_s, placement)
            while self.plan_due_s <= now_s:
                self.plan_due_s += self.interval_s
        self.next_due_s = min(self.plan_due_s, self._pending[0][0] if self._pending else np.inf)
        return pause

    def _plan(self, stats: MoeStats | None) -> Placement | None:
        if stats is None:
            return None
        load = stats.window_load.astype(np.float64)
        if not load.any():
            return None
        share = load / np.maximum(load.sum(axis=1, keepdims=True), 1.0)
        stats.reset_window()
        self._ema = share if self._ema is None else self.ema_decay * self._ema + (1 - self.ema_decay) * share
        self.replans += 1
        return self.planner(self._ema)

    def in_flight(self) -> list[simpy.Event]:
        """Events of the migrations started as DES flows and not yet settled (wait for them all,
        then call ``settle``)."""
        return [ev for _, ev in self._in_flight]

    def settle(self, now_s: float) -> None:
        """The in-flight migrations have landed at ``now_s``: record their pauses."""
        for i, _ in self._in_flight:
            m = self.migrations[i]
            self.migrations[i] = replace(m, pause_s=now_s - m.time_s)
        self._in_flight = []

    def _migrate(self, now_s: float, placement: Placement) -> float:
        pairs = migration_bytes(self.moe.placement, placement, self.moe.shape)
        total = float(pairs.sum())
        pause = 0.0
        if total > 0 and self.live is not None:
            g = np.asarray(self.moe.shape.gpus, np.int64)
            src, dst = np.nonzero(pairs)
            ev = self.live.start(g[src], g[dst], pairs[src, dst], kind="migration")
            self._in_flight.append((len(self.migrations), ev))
        elif total > 0:
            pause = float(self.collectives.all_to_all_s(self.moe.shape.gpus, pairs))
        self.moe.set_placement(placement)
        self.migrations.append(Migration(now_s, total, pause))
        return pause
