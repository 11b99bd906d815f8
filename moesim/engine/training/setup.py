"""Resolve a training scenario into the pieces a run needs (no simulation here).

What is simulated (the symmetry the engine exploits, so that 2,048 GPUs cost one pipeline):

* **one pipeline bundle**: the ``pp`` stages of the data-parallel ranks that share one EP group
  per stage (``mesh.bundle_ranks`` ranks). All bundles run the same schedule on statistically
  identical data and routing, so one is simulated with a SimPy process per stage and one event
  per (micro-batch, chunk) op. Its op costs take, per op, the slowest of the bundle's data ranks
  (variable-length data) and the slowest EP rank of its EP group (routing draws);
* **the EP group of each stage**: the first one, or the one holding a slow GPU / degraded host
  (``StragglerModel``); its GPU ids give the all-to-all costs on the topology;
* **DP synchronisation** over the real groups of every stage (all ``dp x cp`` ranks, all
  ``expert_dp`` ranks; with DualPipe both copies of a stage: those of stages ``s`` and
  ``pp-1-s``); ZeRO-3's per-op gathers and reduce-scatters over the same groups (``zero3.py``);
* **memory** of every stage.

Not simulated: the other bundles (assumed no slower, except what the straggler model moves into
the simulated one), link sharing between concurrent collectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.config.schema import DTYPE_BYTES, GpuSpec, ModelSpec, Scenario
from moesim.config.topology import load_topology
from moesim.config.training import TrainingCfg
from moesim.core.errors import ConfigError
from moesim.core.rng import RngStreams
from moesim.engine.build import ZeroCollectives, load_calibration, resolve_gpu, resolve_model
from moesim.engine.moe_layer import MoeShape
from moesim.engine.moe_setup import build_balancer
from moesim.engine.training.dpsync import GradSync
from moesim.engine.training.faults import StragglerModel
from moesim.engine.training.layout import ChunkLayout, chunk_layout
from moesim.engine.training.memory import MemoryModel, ParamSplit, expert_redundancy, param_split, state_bytes_per_param
from moesim.engine.training.mesh import Mesh, build_mesh
from moesim.engine.training.moe_step import MoeStepModel, build_gate
from moesim.engine.training.mtp import embedding_copy, mtp_model, mtp_params
from moesim.engine.training.opcost import DenseOpModel
from moesim.engine.training.schedule import PipelinePlan, build_plan
from moesim.engine.training.zero3 import Zero3Comm
from moesim.hardware.cost import CostModel, build_cost_model
from moesim.network.collectives import CollectiveCost, SimpleCollectives
from moesim.network.tiled import fast_topology
from moesim.policies.gate import RouterAffinity
from moesim.engine.training.replan import StepReplanner
from moesim.policies.placement import PLACEMENTS, Placement
from moesim.spec.model import ModelShape
from moesim.workload import build_routing

__all__ = ["TrainingSetup", "build_training"]


@dataclass
class TrainingSetup:
    """Everything a training run needs, resolved and checked."""

    scenario: Scenario
    cfg: TrainingCfg
    model: ModelSpec
    gpu: GpuSpec
    shape: ModelShape
    topology: Any
    cost: CostModel
    coll: CollectiveCost
    mesh: Mesh
    layout: ChunkLayout
    plan: PipelinePlan
    params: ParamSplit
    memory: MemoryModel
    memory_table: dict[str, np.ndarray]
    dense: DenseOpModel
    moe: MoeStepModel | None
    sync: GradSync
    stragglers: StragglerModel
    p2p: np.ndarray
    """Per op id, seconds of the point-to-point transfer into it (0 unless its dependency is on
    another stage)."""
    zero3: Zero3Comm | None
    """ZeRO-3 per-op communication (``optimizer.zero: 3``), else None."""
    streams: RngStreams
    micro_batch_tokens: int
    placement: Placement | None
    replanner: StepReplanner | None = None
    """Re-plans the placement every ``placement.replan_interval_steps`` steps, else None."""


def _base_share(scenario: Scenario, model: ModelSpec, tokens: int, rng: np.random.Generator) -> np.ndarray:
    """``[L, E]`` starting slot shares from the scenario's routing model."""
    assert model.moe is not None
    routing = build_routing(scenario.routing, n_layers=model.n_moe_layers, n_experts=model.moe.n_routed_experts,
                            top_k=model.moe.top_k, rng=rng)
    if hasattr(routing, "expected_counts"):
        load = np.asarray(routing.expected_counts(tokens), dtype=np.float64)
    else:
        load = np.mean([routing.next_pass(tokens) for _ in range(16)], axis=0)
    return load / np.maximum(load.sum(axis=-1, keepdims=True), 1e-12)


def _placement(scenario: Scenario, model: ModelSpec, mesh: Mesh, topo: Any, group: tuple[int, ...],
               load: np.ndarray, expert_bytes: float) -> Placement:
    pc = scenario.placement
    assert model.moe is not None
    slots = model.moe.n_routed_experts + pc.redundant_experts
    if slots % mesh.ep:
        raise ConfigError(f"{model.moe.n_routed_experts} experts + {pc.redundant_experts} redundant = {slots} slots "
                          f"do not divide over ep={mesh.ep}", field="placement.redundant_experts")
    ranks = np.asarray(group[::mesh.etp])
    kwargs: dict[str, Any] = {}
    if pc.kind == "eplb":
        kwargs = {"n_groups": pc.groups, "n_nodes": len(set(np.asarray(topo.node_of)[ranks].tolist()))}
    elif pc.kind == "ilp":
        kwargs = {"time_limit_s": pc.time_limit_s, "replicas": pc.redundant_experts}
    bandwidth = np.asarray(topo.bottleneck_bytes_per_s[ranks[:, None], ranks[None, :]]) if topo is not None else None
    return PLACEMENTS.build(pc.kind, **kwargs).place(load, n_gpus=mesh.ep, slots_per_gpu=slots // mesh.ep,
                                                     bandwidth=bandwidth, expert_bytes=expert_bytes)


def _groups(mesh: Mesh, edp_choice: list[int], *, dual: bool = False) -> dict[str, list[tuple[int, ...]]]:
    """Per stage, the simulated bundle's TP / CP / EP groups, the stage's DP / expert-DP groups,
    ``lead``: the data-parallel rank whose GPUs carry the bundle's pipeline transfers, and
    ``dp_sync`` / ``edp_sync``: the groups its gradients reduce over (``dual``: DualPipe's two
    copies of the stage, on stages ``s`` and ``pp-1-s``)."""
    out: dict[str, list[tuple[int, ...]]] = {"tp": [], "cp": [], "ep": [], "dp": [], "edp": [], "lead": [],
                                             "dp_sync": [], "edp_sync": []}
    for s in range(mesh.pp):
        ep = mesh.ep_group(s, edp_choice[s])
        lead = mesh.locate(ep[0])
        out["ep"].append(ep)
        out["tp"].append(mesh.tp_group(s, lead["dp"], lead["cp"]))
        out["cp"].append(mesh.cp_group(s, lead["dp"], 0))
        out["dp"].append(mesh.dp_group(s))
        out["edp"].append(mesh.expert_dp_group(s))
        out["lead"].append((lead["dp"],))
    for s in range(mesh.pp):      # DualPipe: a stage's two copies reduce (and shard) together
        mirror = mesh.pp - 1 - s
        out["dp_sync"].append(out["dp"][s] + out["dp"][mirror] if dual else out["dp"][s])
        out["edp_sync"].append(out["edp"][s] + out["edp"][mirror] if dual else out["edp"][s])
    return out


def build_training(scenario: Scenario, *, collectives: CollectiveCost | None = None) -> TrainingSetup:
    """Resolve presets, build and check the mesh, memory and every cost model (module doc).

    ``collectives`` replaces the network model built from the topology (tests use free
    communication; a flow-level model can be plugged in the same way).
    """
    cfg = scenario.training
    assert cfg is not None
    model, gpu = mtp_model(resolve_model(scenario), cfg.mtp_depth), resolve_gpu(scenario)   # MTP blocks as layers
    spec = load_topology(scenario.hardware.topology)
    topo = fast_topology(spec)
    mesh = build_mesh(cfg, model, topology_gpus=topo.n_gpus, gpus_per_node=spec.gpus_per_node if spec.nodes else 1,
                      topology_name=topo.name)
    streams = RngStreams(scenario.seed)
    strag = StragglerModel(cfg.stragglers, mesh, n_nodes=int(np.asarray(topo.node_of).max()) + 1,
                           rng=streams.get("stragglers"))
    if strag.slow_nodes:
        if not hasattr(topo, "degrade_nodes"):
            raise ConfigError("degraded links need a parametric topology (nodes: N ...)",
                              field="training.stragglers.slow_links")
        topo = topo.degrade_nodes(strag.slow_nodes, cfg.stragglers.link_factor)
    opt = cfg.optimizer
    shape = ModelShape.build(model, weight_dtype=opt.param_dtype, activation_dtype="bf16")
    cost_cfg = scenario.hardware.cost
    profile, mode = load_calibration(scenario.hardware.calibration)
    cost = build_cost_model(gpu, cost_cfg, weight_dtype=opt.compute_dtype, activation_dtype="bf16",
                            profile=profile, profile_mode=mode)
    coll: CollectiveCost = collectives if collectives is not None else (
        ZeroCollectives() if cost_cfg.kind == "constant" else
        SimpleCollectives(topo, efficiency=cost_cfg.network_efficiency, all_reduce_algorithm="auto"))
    sched = cfg.schedule
    layout = chunk_layout(model, mesh.pp * sched.virtual_stages, sched.layers_per_chunk, mtp_depth=cfg.mtp_depth)
    plan = build_plan(sched.kind, pp=mesh.pp, micro_batches=mesh.micro_batches, virtual=sched.virtual_stages)
    groups = _groups(mesh, strag.edp_choice, dual=sched.kind == "dualpipe")
    mb_tokens = cfg.data.micro_batch_seqs * cfg.data.seq_len
    params = param_split(shape, mesh, layout)
    params = ParamSplit(params.dense + mtp_params(model, layout, plan) / mesh.tp, params.expert)
    moe_model, placement, balanced_slots, replanner = None, None, np.zeros(model.n_moe_layers), None
    if scenario.placement.replan_interval_s is not None:
        raise ConfigError("training re-plans by steps: set placement.replan_interval_steps instead of "
                          "placement.replan_interval_s", field="placement.replan_interval_s")
    redundancy = expert_redundancy(model, scenario.placement.redundant_experts)
    if model.moe is not None:
        moe = model.moe
        params = ParamSplit(params.dense, params.expert * redundancy)
        t_group = mesh.group_tokens(mb_tokens)
        base = _base_share(scenario, model, t_group, streams.get("routing"))
        expert_bytes = shape.expert_params * DTYPE_BYTES[opt.param_dtype] / mesh.etp
        placement = _placement(scenario, model, mesh, topo, groups["ep"][0], base * t_group * moe.top_k, expert_bytes)
        dispatch_bytes = 1.5 if opt.compute_dtype == "fp8" else shape.act_bytes_per_elem   # fp8 dispatch, bf16 combine
        mshape = MoeShape(hidden=model.hidden_size, intermediate_per_gpu=moe.expert_intermediate // mesh.etp,
                          act_bytes=dispatch_bytes, expert_bytes_per_gpu=expert_bytes, expert_tp=mesh.etp,
                          gpus=groups["ep"][0])
        affinity = RouterAffinity(base, drift_sigma=cfg.router.drift_sigma, drift_tau_steps=cfg.router.drift_tau_steps,
                                  phases=cfg.router.phases, steps=cfg.router.warmup_steps + cfg.steps,
                                  rng=streams.get("router-drift"))
        moe_model = MoeStepModel(layout=layout, stage_groups=groups["ep"], shape=mshape, placement=placement,
                                 balancer=build_balancer(scenario), affinity=affinity,
                                 gate=build_gate(cfg, moe.top_k), cost=cost, coll=coll, group_tokens=t_group,
                                 top_k=moe.top_k, samples=cfg.samples_per_step, cfg=cfg, pp=mesh.pp,
                                 node_of=np.asarray(topo.node_of))
        moe_model.warm_up(cfg.router.warmup_steps)
        balanced_slots = np.full(model.n_moe_layers, t_group * moe.top_k / mesh.ep)
        replanner = _replanner(scenario, model, mesh, topo, groups["ep"][0], moe_model, coll, t_group * moe.top_k,
                               expert_bytes)
    zero3 = None
    if opt.zero >= 3:
        zero3 = Zero3Comm(shape=shape, mesh=mesh, layout=layout, plan=plan, cfg=cfg, coll=coll,
                          dp_groups=groups["dp_sync"], edp_groups=groups["edp_sync"], expert_redundancy=redundancy)
    sizes = (np.array([len(g) for g in groups["dp_sync"]]), np.array([len(g) for g in groups["edp_sync"]]))
    memory = MemoryModel(shape=shape, mesh=mesh, layout=layout, plan=plan, cfg=cfg, gpu=gpu, params=params,
                         group_sizes=sizes, gathered=zero3.gathered_bytes if zero3 is not None else None)
    table = memory.check(mb_tokens, balanced_slots)
    dense = DenseOpModel(shape=shape, cost=cost, coll=coll, mesh=mesh, layout=layout, cfg=cfg,
                         tp_groups=groups["tp"], cp_groups=groups["cp"], dp_groups=groups["dp"])
    embed_pair = None
    if embedding_copy(model, layout, plan):
        first, last = int(plan.home_stage[0]), int(plan.home_stage[-1])
        embed_pair = (mesh.gpu(stage=first, dp_rank=groups["lead"][first][0]),
                      mesh.gpu(stage=last, dp_rank=groups["lead"][last][0]))
    sync = GradSync(params=params, mesh=mesh, plan=plan, cfg=cfg, cost=cost, coll=coll, dp_groups=groups["dp_sync"],
                    edp_groups=groups["edp_sync"], node_of=np.asarray(topo.node_of), embed_pair=embed_pair,
                    embed_params=model.vocab_size * model.hidden_size / mesh.tp)
    p2p = _p2p(mesh, plan, coll, groups, mb_tokens, model.hidden_size * shape.act_bytes_per_elem)
    return TrainingSetup(scenario=scenario, cfg=cfg, model=model, gpu=gpu, shape=shape, topology=topo, cost=cost,
                         coll=coll, mesh=mesh, layout=layout, plan=plan, params=params, memory=memory,
                         memory_table=table, dense=dense, moe=moe_model, sync=sync, stragglers=strag, p2p=p2p,
                         zero3=zero3, streams=streams, micro_batch_tokens=mb_tokens, placement=placement,
                         replanner=replanner)


def _replanner(scenario: Scenario, model: ModelSpec, mesh: Mesh, topo: Any, group: tuple[int, ...],
               moe_model: MoeStepModel, coll: CollectiveCost, slots_per_group: float,
               expert_bytes: float) -> StepReplanner | None:
    """The step re-planner when ``placement.replan_interval_steps`` is set. Bytes moved per
    expert weight byte: the weight plus its optimizer state on the rank (master copy and moments,
    sharded over the expert-DP group from ZeRO-1 on)."""
    pc, opt = scenario.placement, scenario.training.optimizer  # type: ignore[union-attr]
    if pc.replan_interval_steps is None:
        return None
    w = DTYPE_BYTES[opt.param_dtype]
    states = state_bytes_per_param(opt) / (mesh.edp if opt.zero >= 1 else 1)
    return StepReplanner(
        interval_steps=pc.replan_interval_steps, ema_decay=pc.ema_decay,
        planner=lambda share: _placement(scenario, model, mesh, topo, group, share * slots_per_group, expert_bytes),
        stages=moe_model.stage_layers, collectives=coll, state_factor=(w + states) / w)


def _p2p(mesh: Mesh, plan: PipelinePlan, coll: CollectiveCost, groups: dict[str, list[tuple[int, ...]]],
         mb_tokens: int, bytes_per_token: float) -> np.ndarray:
    """Per op, the activation / gradient transfer from its dependency's stage (per TP rank, SP shard)."""
    nbytes = mb_tokens / (mesh.tp * mesh.cp) * bytes_per_token
    cache: dict[tuple[int, int], float] = {}
    out = np.zeros(plan.n_ops)
    for me, dep in enumerate(plan.dep_of):
        if dep < 0:
            continue
        src, dst = plan.op_stage[dep], plan.op_stage[me]
        if src == dst:
            continue
        if (src, dst) not in cache:
            dp_rank = groups["lead"][dst][0]
            cache[(src, dst)] = float(coll.p2p_s(mesh.gpu(stage=src, dp_rank=dp_rank),
                                                 mesh.gpu(stage=dst, dp_rank=dp_rank), nbytes))
        out[me] = cache[(src, dst)]
    return out
