"""The one :class:`Placement` type every placement policy returns, its protocol and registry.

Layout (the vLLM / DeepSeek-EPLB triple). A layer has ``R = P * S`` physical *slots*; GPU ``g``
holds slots ``g*S … (g+1)*S - 1`` (``S = R / P`` slots per GPU per layer). ``phy2log[l, s]`` is
the logical expert in slot ``s`` of layer ``l``, or ``-1`` for an empty slot (a policy that
places fewer than ``S`` experts on a GPU in some layer, such as contiguous placement with spare
slots or the ILP's uneven clusters). An expert in several slots is *replicated*; unless a
balancer says otherwise its tokens split evenly over its replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from moesim.core.errors import InfeasiblePlacement
from moesim.policies.registry import Registry

__all__ = [
    "PLACEMENTS",
    "Placement",
    "PlacementPolicy",
    "PlacementReport",
    "SolveRecord",
    "check_hbm",
    "check_inputs",
]


@dataclass(frozen=True)
class SolveRecord:
    """One solver call: which stage/layer, its status, objective, best bound and wall time."""

    stage: str
    layer: int | None
    status: str
    objective: float | None
    bound: float | None
    time_s: float


@dataclass(frozen=True)
class PlacementReport:
    """How a solver-backed placement was obtained.

    Attributes:
        status: ``"optimal"`` (every solve proved optimal), ``"feasible"`` (a time limit or gap
            tolerance stopped a solve with an incumbent), ``"heuristic"`` (a solve found nothing
            better than its warm start, or was skipped, so the heuristic stands).
        objective: stage-1 objective, sum over layers of sum over GPUs of |GPU load - mean|
            (tokens, even split over replicas).
        bound: best proven lower bound on ``objective`` (sum of per-layer bounds); ``None`` when
            CBC reported no bound for some layer.
        gap: ``(objective - bound) / objective`` (0 when both are 0); ``None`` without a bound.
        traffic_objective: stage-2 objective, sum over layer transitions of the max over GPU
            pairs of traffic / bandwidth (tokens per byte/s); ``None`` when stage 2 had no
            traffic to optimise.
        traffic_bound: CBC's lower bound on ``traffic_objective`` (None: not solved or no bound).
        solves: every solver call, in order.
        notes: fallbacks and skipped stages, in words.
    """

    status: str
    objective: float
    bound: float | None
    gap: float | None
    traffic_objective: float | None = None
    traffic_bound: float | None = None
    solves: tuple[SolveRecord, ...] = ()
    notes: tuple[str, ...] = ()


def _frozen_int(values: object, name: str, ndim: int) -> np.ndarray:
    arr = np.array(values, dtype=np.int64, copy=True)
    if arr.ndim != ndim:
        raise ValueError(f"Placement.{name} must be {ndim}-D, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


def _derive(phy2log: np.ndarray, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """``(log2phy int[L, E, maxcnt] padded -1 with slots ascending, logcnt int[L, E])``."""
    n_layers, n_slots = phy2log.shape
    layer, slot = np.nonzero(phy2log >= 0)
    key = layer * n_experts + phy2log[layer, slot]
    logcnt = np.bincount(key, minlength=n_layers * n_experts).reshape(n_layers, n_experts)
    maxcnt = max(1, int(logcnt.max(initial=0)))
    order = np.argsort(key, kind="stable")        # row-major input: slots stay ascending per key
    skey, sslot = key[order], slot[order]
    rank = np.arange(skey.size) - np.searchsorted(skey, skey, side="left")
    log2phy = np.full((n_layers * n_experts, maxcnt), -1, dtype=np.int64)
    log2phy[skey, rank] = sslot
    return log2phy.reshape(n_layers, n_experts, maxcnt), logcnt


@dataclass(frozen=True, eq=False)
class Placement:
    """Expert -> GPU slot map for every MoE layer; arrays are copied, read-only and checked.

    Attributes:
        phy2log: ``int64[L, R]`` logical expert in each physical slot, ``-1`` = empty slot.
        log2phy: ``int64[L, E, maxcnt]`` slots holding each expert (ascending is conventional
            but not required), padded with ``-1``.
        logcnt: ``int64[L, E]`` replica count of each expert, every entry ``>= 1``.
        n_gpus: ``P``; ``R`` must be a multiple of it.
        report: solver provenance for ILP placements, else ``None``.

    Equality is identity; compare the arrays when you need to.
    """

    phy2log: np.ndarray
    log2phy: np.ndarray
    logcnt: np.ndarray
    n_gpus: int
    report: PlacementReport | None = field(default=None)

    def __post_init__(self) -> None:
        phy2log = _frozen_int(self.phy2log, "phy2log", 2)
        log2phy = _frozen_int(self.log2phy, "log2phy", 3)
        logcnt = _frozen_int(self.logcnt, "logcnt", 2)
        for name, arr in (("phy2log", phy2log), ("log2phy", log2phy), ("logcnt", logcnt)):
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "n_gpus", int(self.n_gpus))
        self._check()

    @classmethod
    def from_phy2log(cls, phy2log: np.ndarray, *, n_experts: int, n_gpus: int,
                     report: PlacementReport | None = None) -> Placement:
        """Build the triple from ``phy2log int[L, R]`` (log2phy slots ascending)."""
        arr = np.asarray(phy2log, dtype=np.int64)
        if arr.ndim != 2:
            raise ValueError(f"phy2log must be [layers, slots], got shape {arr.shape}")
        if arr.size and (arr.min() < -1 or arr.max() >= n_experts):
            raise ValueError(f"phy2log entries must lie in [-1, {n_experts}); got "
                             f"[{arr.min()}, {arr.max()}]")
        log2phy, logcnt = _derive(arr, n_experts)
        return cls(phy2log=arr, log2phy=log2phy, logcnt=logcnt, n_gpus=n_gpus, report=report)

    def _check(self) -> None:
        n_layers, n_slots = self.phy2log.shape
        if self.n_gpus <= 0 or n_slots == 0 or n_slots % self.n_gpus:
            raise ValueError(f"Placement: {n_slots} slots per layer is not a positive multiple of "
                             f"n_gpus={self.n_gpus}")
        if self.logcnt.shape[0] != n_layers or self.log2phy.shape[:2] != self.logcnt.shape:
            raise ValueError(f"Placement: shapes disagree: phy2log {self.phy2log.shape}, "
                             f"log2phy {self.log2phy.shape}, logcnt {self.logcnt.shape}")
        n_experts = self.logcnt.shape[1]
        if self.phy2log.min() < -1 or self.phy2log.max() >= n_experts:
            raise ValueError(f"Placement.phy2log: entries must lie in [-1, {n_experts})")
        log2phy, logcnt = _derive(self.phy2log, n_experts)
        missing = np.argwhere(logcnt == 0)
        if missing.size:
            l, e = missing[0]
            raise ValueError(f"Placement: expert {e} of layer {l} has no slot "
                             f"({len(missing)} (layer, expert) pairs unplaced)")
        bad = np.argwhere(logcnt != self.logcnt)
        if bad.size:
            l, e = bad[0]
            raise ValueError(f"Placement.logcnt[{l}, {e}] = {self.logcnt[l, e]} but phy2log holds "
                             f"expert {e} of layer {l} in {logcnt[l, e]} slots")
        if self.log2phy.shape[2] < log2phy.shape[2]:
            raise ValueError(f"Placement.log2phy: maxcnt {self.log2phy.shape[2]} < "
                             f"max replica count {log2phy.shape[2]}")
        padded = np.full(self.log2phy.shape, -1, dtype=np.int64)
        padded[:, :, : log2phy.shape[2]] = log2phy
        valid = np.where(self.log2phy >= 0, self.log2phy, np.iinfo(np.int64).max)
        if not np.array_equal(np.where(padded >= 0, padded, np.iinfo(np.int64).max),
                              np.sort(valid, axis=2)):
            raise ValueError("Placement.log2phy does not list exactly the slots phy2log gives "
                             "each expert (padded with -1)")

    # ----- shape helpers -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """``L``, MoE layers."""
        return int(self.phy2log.shape[0])

    @property
    def n_experts(self) -> int:
        """``E``, logical experts per layer."""
        return int(self.logcnt.shape[1])

    @property
    def n_slots(self) -> int:
        """``R``, physical slots per layer."""
        return int(self.phy2log.shape[1])

    @property
    def slots_per_gpu(self) -> int:
        """``S = R / P``, slots per GPU per layer."""
        return self.n_slots // self.n_gpus

    def gpu_of_slot(self, slot: int | np.ndarray) -> int | np.ndarray:
        """GPU holding ``slot`` (scalar or array): ``slot // S``."""
        if isinstance(slot, np.ndarray):
            return slot // self.slots_per_gpu
        return int(slot) // self.slots_per_gpu

    def expert_gpus(self, layer: int, expert: int) -> np.ndarray:
        """``int64[logcnt]`` GPU of each replica of ``expert`` in ``layer``, in log2phy order.

        A GPU appears twice when it holds two replicas (EPLB may co-locate them).
        """
        slots = self.log2phy[layer, expert]
        return slots[slots >= 0] // self.slots_per_gpu

    def experts_per_gpu(self) -> np.ndarray:
        """``int64[L, P]`` filled slots (expert replicas) on each GPU in each layer."""
        filled = (self.phy2log >= 0).reshape(self.n_layers, self.n_gpus, self.slots_per_gpu)
        return filled.sum(axis=2).astype(np.int64)

    # ----- load and memory -----------------------------------------------------------------
    def gpu_load(self, load: np.ndarray, split: Literal["even"] = "even") -> np.ndarray:
        """``float64[L, P]`` token load per GPU from ``load [L, E]`` tokens per expert.

        ``split="even"``: an expert's load divides evenly over its replicas (the only split a
        placement alone implies; balancers decide others).
        """
        if split != "even":
            raise ValueError(f"split={split!r}: only 'even' is defined on a placement")
        load = np.asarray(load, dtype=np.float64)
        if load.shape != self.logcnt.shape:
            raise ValueError(f"load shape {load.shape} != [layers, experts] {self.logcnt.shape}")
        share = load / self.logcnt
        per_slot = np.where(self.phy2log >= 0,
                            np.take_along_axis(share, np.maximum(self.phy2log, 0), axis=1), 0.0)
        return per_slot.reshape(self.n_layers, self.n_gpus, self.slots_per_gpu).sum(axis=2)

    def imbalance(self, load: np.ndarray) -> np.ndarray:
        """``float64[L]`` max / mean GPU load per layer (1.0 is perfect; 1.0 for an idle layer)."""
        gl = self.gpu_load(load)
        mean = gl.mean(axis=1)
        return np.where(mean > 0, gl.max(axis=1) / np.where(mean > 0, mean, 1.0), 1.0)

    def deviation(self, load: np.ndarray) -> np.ndarray:
        """``float64[L]`` sum over GPUs of |GPU load - layer mean| (the ILP's stage-1 objective)."""
        gl = self.gpu_load(load)
        return np.abs(gl - gl.mean(axis=1, keepdims=True)).sum(axis=1)

    def memory_bytes_per_gpu(self, expert_bytes: float) -> np.ndarray:
        """``float64[P]`` expert weight bytes on each GPU, all layers (filled slots x bytes)."""
        return self.experts_per_gpu().sum(axis=0) * float(expert_bytes)


class PlacementPolicy(Protocol):
    """Chooses a :class:`Placement` from per-expert load estimates (a pure function)."""

    def place(self, load: np.ndarray, *, n_gpus: int, slots_per_gpu: int,
              bandwidth: np.ndarray | None = None, transitions: np.ndarray | None = None,
              hbm_free_bytes: np.ndarray | None = None, expert_bytes: float = 0.0,
              rng: np.random.Generator | None = None) -> Placement:
        """Place every expert.

        Args:
            load: ``float[L, E]`` expected tokens per expert per pass (any non-negative scale).
            n_gpus: ``P``, EP ranks.
            slots_per_gpu: ``S``, expert slots per GPU per layer (``R = P*S``).
            bandwidth: ``float[P, P]`` bytes/s between GPU pairs (diagonal ignored), or None.
            transitions: ``float[L-1, E, E]`` tokens going from expert e at layer l to e' at
                layer l+1, or None.
            hbm_free_bytes: ``float[P]`` HBM left for expert weights on each GPU, or None
                (unlimited).
            expert_bytes: weight bytes of one expert of one layer.
            rng: for randomised policies; the built-ins are deterministic and ignore it.

        Raises:
            InfeasiblePlacement: the experts cannot fit (names the GPU and the shortfall).
        """
        ...


PLACEMENTS: Registry[PlacementPolicy] = Registry("placement")


def check_inputs(load: np.ndarray, n_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """Validate the common arguments; ``float64[L, E]`` load back, or ValueError/Infeasible."""
    arr = np.asarray(load, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"load must be [layers, experts], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min(initial=0.0) < 0:
        raise ValueError("load must be finite and non-negative")
    if n_gpus <= 0 or slots_per_gpu <= 0:
        raise ValueError(f"n_gpus={n_gpus} and slots_per_gpu={slots_per_gpu} must be positive")
    n_experts = arr.shape[1]
    need = -(-n_experts // n_gpus)
    if need > slots_per_gpu:
        raise InfeasiblePlacement(
            f"gpu 0 (and every gpu): {n_experts} experts over {n_gpus} gpus need >= {need} slots "
            f"per gpu per layer, have {slots_per_gpu}; short by {need - slots_per_gpu} slots")
    return arr


def check_hbm(placement: Placement, *, expert_bytes: float, hbm_free_bytes: np.ndarray | None,
              policy: str) -> None:
    """InfeasiblePlacement naming the first GPU whose expert weights exceed its free HBM."""
    if hbm_free_bytes is None:
        return
    free = np.asarray(hbm_free_bytes, dtype=np.float64)
    if free.shape != (placement.n_gpus,):
        raise ValueError(f"hbm_free_bytes shape {free.shape} != [n_gpus] ({placement.n_gpus},)")
    need = placement.memory_bytes_per_gpu(expert_bytes)
    over = np.nonzero(need > free)[0]
    if over.size:
        g = int(over[0])
        n = int(placement.experts_per_gpu()[:, g].sum())
        raise InfeasiblePlacement(
            f"gpu {g}: placement {policy!r} puts {n} experts x {expert_bytes:.6g} B = "
            f"{need[g]:.6g} B of weights on it but only {free[g]:.6g} B of HBM is free; short by "
            f"{need[g] - free[g]:.6g} B ({len(over)} gpu(s) over)")
