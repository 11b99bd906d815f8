"""Checkpoint writes and reads through the memory / storage tiers: GPU -> host DRAM -> storage.

**Bytes.** A checkpoint holds every parameter (``param_dtype``) and its optimizer state (fp32
master copy when ``master_weights``, two Adam moments in ``state_dtype``), each written once
(logical experts only: redundant EPLB copies are not saved). Chunk ``c``'s dense parameters on
one GPU (its TP shard, ``ParamSplit.dense[c]``) exist on ``dp x cp x n_c`` GPUs and its routed
experts (``ParamSplit.expert[c]``) on ``expert_dp x n_c`` (``n_c``: stages holding the chunk, 2
for DualPipe). What a GPU writes follows the ZeRO stage (``training.optimizer.zero``, as the
memory model holds the bytes): sharded bytes (optimizer states with ZeRO >= 1, parameters with
ZeRO-3) are written by their holder; replicated ones either split evenly over their copies
(``checkpoint.parallel_save``, Megatron's fully parallel save) or written whole by the first
data-parallel rank of the first stage holding them (DeepSpeed's layout).

**Time** (closed forms, every GPU and host at once; ``w_g``: bytes of GPU g, ``W_h``: of host h):

* snapshot (device -> host DRAM over the host link): ``max(max_g w_g / B_link, max_sw W_sw /
  B_uplink)``, ``B_link`` = the topology's ``host.bandwidth`` (else the GPU's
  ``pcie_bytes_per_s``), ``B_uplink`` = ``host.uplink_bandwidth`` shared by the
  ``gpus_per_switch`` GPUs of a PCIe switch (``link: pcie`` hosts only);
* drain (host -> storage): ``local_nvme``: ``max_h W_h / nvme_bytes_per_s``; ``remote``:
  ``max(max_h W_h / (nics_per_node x nic_bandwidth x network_efficiency), sum W /
  storage_bytes_per_s)`` (hosts without NICs: the aggregate cap only);
* blocking per checkpoint: ``async_save``: the snapshot (the drain overlaps the next steps; the
  next snapshot waits for it if the drain outlasts the interval; the checkpoint counts only once
  drained); sync: snapshot + drain (staged through host memory);
* reload after a failure: the same path backwards at the same bandwidths, ``drain + snapshot``,
  plus ``failures.restart_s``.

Not modelled: host-DRAM capacity, the drain's PCIe / NIC traffic competing with training
traffic, and losing a local-NVMe checkpoint with its host.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from moesim.config.schema import DTYPE_BYTES
from moesim.config.topology import TopologySpec, load_topology
from moesim.engine.training.memory import expert_redundancy, stage_hold, state_bytes_per_param
from moesim.engine.training.setup import TrainingSetup

__all__ = ["CheckpointPlan", "checkpoint_plan", "gpu_write_bytes"]


@dataclass(frozen=True)
class CheckpointPlan:
    """Sizes and times of one checkpoint (module doc)."""

    bytes_total: float
    gpu_bytes: np.ndarray
    """``[G]`` bytes each GPU of the job writes."""
    host_bytes: np.ndarray
    """``[hosts]`` bytes each host writes."""
    snapshot_s: float
    drain_s: float
    block_s: float
    """Training time one checkpoint blocks (the drain back-pressure comes on top, in the run)."""

    @property
    def write_s(self) -> float:
        """Snapshot + drain: the whole write of one checkpoint."""
        return self.snapshot_s + self.drain_s

    @property
    def commit_s(self) -> float:
        """Seconds after the snapshot starts until the checkpoint is restorable: the whole write."""
        return self.write_s

    @property
    def reload_s(self) -> float:
        """Seconds to read a checkpoint back (the same path backwards, same bandwidths)."""
        return self.write_s

    def summary(self) -> dict[str, float]:
        """Summary keys of one checkpoint (docs/metrics.md)."""
        return {"checkpoint_bytes": self.bytes_total, "checkpoint_gpu_bytes_max": float(self.gpu_bytes.max()),
                "checkpoint_host_bytes_max": float(self.host_bytes.max()), "checkpoint_snapshot_s": self.snapshot_s,
                "checkpoint_drain_s": self.drain_s, "checkpoint_write_s": self.write_s,
                "checkpoint_block_s": self.block_s, "checkpoint_reload_s": self.reload_s}


def gpu_write_bytes(setup: TrainingSetup) -> np.ndarray:
    """``[G]`` checkpoint bytes each GPU of the job writes (module doc)."""
    mesh, plan, cfg = setup.mesh, setup.plan, setup.cfg
    opt, ck = cfg.optimizer, cfg.checkpoint
    hold = stage_hold(plan)                                          # [pp, C]
    holders = np.maximum(hold.sum(axis=0), 1.0)                      # n_c
    redundancy = expert_redundancy(setup.model, setup.scenario.placement.redundant_experts)
    dense, expert = np.asarray(setup.params.dense, float), np.asarray(setup.params.expert, float) / redundancy
    p_b = DTYPE_BYTES[opt.param_dtype]
    s_b = state_bytes_per_param(opt)
    ranks = [mesh.locate(g) for g in range(mesh.gpus)]
    stage, dp_rank, cp_rank, edp_rank = (np.array([r[k] for r in ranks]) for k in ("stage", "dp", "cp", "edp"))
    held = hold[stage]                                               # [G, C]
    dense_writer = (dp_rank == 0) & (cp_rank == 0)
    expert_writer = edp_rank == 0
    out = np.zeros(mesh.gpus)
    for per_gpu, copies, writer in ((dense, mesh.dp * mesh.cp * holders, dense_writer),
                                    (expert, mesh.edp * holders, expert_writer)):
        lead = writer[:, None] & (stage[:, None] == plan.home_stage[None, :])       # [G, C] writes replicated bytes
        for nbytes, sharded in ((per_gpu * p_b, opt.zero >= 3), (per_gpu * s_b, opt.zero >= 1)):
            if sharded or ck.parallel_save:
                out += held @ (nbytes / copies)
            else:
                out += (held * lead) @ nbytes
    return out


def _host_link(setup: TrainingSetup, spec: TopologySpec) -> tuple[float, float, int]:
    """``(per-GPU host link bytes/s, PCIe switch uplink bytes/s, GPUs per switch)``."""
    host = spec.host
    if host is None:
        return float(setup.gpu.pcie_bytes_per_s), np.inf, 1
    if host.link == "c2c":
        return float(host.bandwidth), np.inf, 1
    return float(host.bandwidth), float(host.uplink_bandwidth or host.bandwidth), int(host.gpus_per_switch)


def checkpoint_plan(setup: TrainingSetup) -> CheckpointPlan:
    """Bytes and seconds of one checkpoint of ``setup`` (module doc)."""
    ck = setup.cfg.checkpoint
    spec = load_topology(setup.scenario.hardware.topology)
    w = gpu_write_bytes(setup)
    link, uplink, per_switch = _host_link(setup, spec)
    switch = np.bincount(np.arange(w.size) // per_switch, weights=w)
    snapshot = float(max(w.max() / link, switch.max() / uplink))
    node_of = np.asarray(setup.topology.node_of)[: w.size]
    hosts = np.bincount(node_of, weights=w)
    hosts = hosts[np.bincount(node_of) > 0]                          # the job's hosts
    if ck.target == "local_nvme":
        drain = float(hosts.max() / ck.nvme_bytes_per_s)
    else:
        nic = spec.nics_per_node * float(spec.nic_bandwidth or 0.0)
        drain = float(w.sum() / ck.storage_bytes_per_s)
        if nic > 0:
            drain = max(drain, float(hosts.max() / (nic * setup.scenario.hardware.cost.network_efficiency)))
    block = snapshot if ck.async_save else snapshot + drain
    return CheckpointPlan(bytes_total=float(w.sum()), gpu_bytes=w, host_bytes=hosts, snapshot_s=snapshot,
                          drain_s=drain, block_s=block)
