"""The ``training:`` section of a scenario (issue 6): a scenario with it set simulates training steps.

Sections: ``parallel`` (the DP x TP x PP x EP x CP mesh), ``schedule`` (pipeline schedule),
``data`` (batch, sequence lengths, packing), ``optimizer`` (ZeRO stage, dtypes, gradient-sync
overlap), ``recompute``, ``gate`` (token -> expert routing rule and its training-time dynamics,
POLICIES.md C1-C7), ``router`` (how the router's own preferences evolve), ``dispatch`` (how tokens
reach their experts, node-limited routing), ``mtp_depth`` (multi-token prediction), ``stragglers``,
``checkpoint`` and ``failures``. The model, GPU, topology, expert popularity (``routing``) and
expert placement (``placement`` / ``balance``) come from the rest of the scenario; ``deployment``,
``scheduler``, ``workload`` and ``slo`` are inference-only and ignored.

Checks that need the model or the topology (sizes dividing, EP fitting its group, memory) run when
the training simulator builds its mesh and raise ``ConfigError`` naming the ``training.*`` field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from moesim.config.schema import BytesPerS, Dtype, Frozen, LengthDist, Seconds
from moesim.core import units

__all__ = [
    "CheckpointCfg", "DispatchCfg", "FailureCfg", "GATE_KINDS", "GateCfg", "OptimizerCfg", "ParallelCfg", "PhasesCfg",
    "RECOMPUTE_MODULES", "RouterDynamicsCfg", "ScheduleCfg", "StragglerCfg", "TrainDataCfg", "TrainingCfg",
]

NonNegBytes = Annotated[float, BeforeValidator(units.parse_bytes), Field(ge=0)]

GATE_KINDS = ("none", "aux_loss", "loss_free_bias", "bip", "sinkhorn", "expert_choice")
"""``GateCfg.kind`` values; ``moesim.policies.gate.GATES`` registers exactly these (tested)."""
GateKind = Literal["none", "aux_loss", "loss_free_bias", "bip", "sinkhorn", "expert_choice"]

RECOMPUTE_MODULES = ("core_attn", "layernorm", "attn_proj", "moe_act", "moe", "shared_experts", "mlp")
"""Modules ``recompute: selective`` may recompute (Megatron's ``--recompute-modules`` vocabulary)."""
RecomputeModule = Literal["core_attn", "layernorm", "attn_proj", "moe_act", "moe", "shared_experts", "mlp"]


class ParallelCfg(Frozen):
    """Parallel degrees of the training mesh (rank order: see ``moesim/engine/training/mesh.py``).

    Attention and dense layers run ``tp x cp x dp`` per pipeline stage; the MoE layers of the same
    GPUs run ``expert_tp x ep x expert_dp`` with ``expert_dp = tp*cp*dp / (expert_tp*ep)``
    (Megatron's expert-parallel folding). Sequence parallelism is on whenever ``tp > 1``.
    """

    tp: int = Field(1, gt=0)
    """Tensor parallel degree of attention / dense layers (inside one node)."""
    cp: int = Field(1, gt=0)
    """Context parallel degree (the sequence split over ranks for attention)."""
    pp: int = Field(1, gt=0)
    """Pipeline stages."""
    ep: int = Field(1, gt=0)
    """Expert parallel degree (the routed experts of a layer are split over ``ep`` ranks)."""
    expert_tp: int = Field(1, gt=0)
    """Tensor parallel degree inside each expert."""
    dp: int | None = Field(None, gt=0)
    """Data parallel degree; None: ``gpus / (tp * cp * pp)``."""
    gpus: int | None = Field(None, gt=0)
    """GPUs the job uses (the first ones of the topology); None: all of them."""


class ScheduleCfg(Frozen):
    """Pipeline schedule of the micro-batches of a step."""

    kind: Literal["gpipe", "1f1b", "interleaved_1f1b", "dualpipe"] = "1f1b"
    """``gpipe`` (all forwards, then all backwards), ``1f1b`` (PipeDream-flush),
    ``interleaved_1f1b`` (Megatron's virtual pipeline: ``virtual_stages`` model chunks per GPU), or
    ``dualpipe`` (DeepSeek-V3: micro-batches fed from both ends, each GPU holding stages ``s`` and
    ``pp-1-s``, forward and backward chunks of two micro-batches overlapped so that their MoE
    all-to-all hides behind computation, backward split into input and weight parts; needs an
    even ``pp`` and an even number of micro-batches ``>= 2 pp``; see
    ``moesim/engine/training/dualpipe.py``)."""
    virtual_stages: int = Field(1, gt=0)
    """Model chunks per pipeline stage (interleaved_1f1b only; it needs >= 2)."""
    layers_per_chunk: tuple[int, ...] | None = None
    """Transformer layers of each of the ``pp * virtual_stages`` model chunks, in model order
    (None: as even as possible, the first and last chunks lighter since they hold the embedding
    and the LM head)."""
    ep_comm_overlap: float = Field(0.0, ge=0, le=1)
    """Share of the MoE dispatch / combine all-to-all hidden behind computation in gpipe / 1f1b /
    interleaved_1f1b (0: none; a stand-in for overlap those schedules do not model, such as
    micro-batch splitting). Must stay 0 with ``dualpipe``, which models the hiding itself."""

    @model_validator(mode="after")
    def _virtual(self) -> ScheduleCfg:
        if self.kind == "interleaved_1f1b" and self.virtual_stages < 2:
            raise ValueError("kind=interleaved_1f1b needs virtual_stages >= 2 (with 1 it is plain 1f1b)")
        if self.kind != "interleaved_1f1b" and self.virtual_stages != 1:
            raise ValueError(f"virtual_stages={self.virtual_stages} needs kind=interleaved_1f1b")
        if self.kind == "dualpipe" and self.ep_comm_overlap:
            raise ValueError(f"ep_comm_overlap={self.ep_comm_overlap} with kind=dualpipe: DualPipe hides the "
                             "all-to-all in its overlapped forward/backward chunks itself; set ep_comm_overlap: 0")
        return self


class TrainDataCfg(Frozen):
    """The global batch of a step and the documents that fill it."""

    seq_len: int = Field(4096, gt=0)
    """Tokens of one training sample (a packed sequence; the longest a document may be)."""
    global_batch_seqs: int = Field(1024, gt=0)
    """Samples per step (tokens per step = global_batch_seqs x seq_len)."""
    micro_batch_seqs: int = Field(1, gt=0)
    """Samples per micro-batch per data-parallel rank."""
    documents: LengthDist | None = None
    """Document length distribution (tokens); None: every sample is one full-length document."""
    packing: bool = True
    """Pack documents into samples of exactly ``seq_len`` tokens (attention stays inside a document);
    false: one document per sample, unpadded (token counts vary)."""
    balance: Literal["none", "length_aware"] = "none"
    """How a step's documents are spread over DP ranks and micro-batches: in arrival order, or
    length-aware (longest first, dealt to the bin with the least attention work so far,
    Zeppelin / ByteScale style)."""


class OptimizerCfg(Frozen):
    """Mixed-precision Adam with an optional ZeRO-sharded (distributed) optimizer."""

    zero: Literal[0, 1, 2, 3] = 1
    """0: replicated states, gradients all-reduced; 1: optimizer states sharded over DP, gradients
    reduce-scattered, parameters all-gathered after the update; 2: gradients sharded too; 3:
    parameters sharded too (FSDP): every layer's parameters all-gathered before its forward and
    again before its backward, its gradients reduce-scattered after its backward, per micro-batch
    (``moesim/engine/training/zero3.py``)."""
    compute_dtype: Dtype = "bf16"
    """GEMM dtype (``fp8``: FP8 tensor-core FLOP/s, as DeepSeek-V3)."""
    param_dtype: Dtype = "bf16"
    grad_dtype: Dtype = "fp32"
    """Gradient buffer and reduction dtype."""
    master_weights: bool = True
    """Keep an fp32 master copy of the parameters in the optimizer state."""
    state_dtype: Dtype = "fp32"
    """Adam first and second moments (DeepSeek-V3 keeps them in bf16)."""
    overlap_grad_reduce: bool = True
    """Launch each gradient bucket's reduction as soon as the last micro-batch's backward produced it
    (ZeRO-3: run each layer's reduce-scatter behind the backward of the next; off: it blocks)."""
    overlap_param_gather: bool = False
    """ZeRO-1/2: hide the parameter all-gather behind the next step's forward. ZeRO-3: prefetch
    each layer's parameters behind the computation of the one before (exposed only where the
    gathers outlast an op's computation); off: every gather blocks its layer."""
    bucket_params: int = Field(40_000_000, gt=0)
    """Parameters per gradient bucket (Megatron's default 40M)."""


class GateCfg(Frozen):
    """Token -> expert routing rule during training and the balancing that shapes it (POLICIES.md C).

    Every kind keeps its knobs here so that ``--set training.gate.kind=...`` switches kinds.
    See ``moesim/policies/gate/`` for the model of each kind.
    """

    kind: GateKind = "none"
    """``none`` (plain top-k), ``aux_loss`` (load-balancing loss), ``loss_free_bias`` (DeepSeek
    expert bias), ``bip`` (dual prices from a few BIP iterations), ``sinkhorn`` (optimal-transport
    routing), ``expert_choice`` (each expert takes its top tokens)."""
    aux_coeff: float = Field(1e-2, ge=0)
    """aux_loss: coefficient alpha of ``E * sum f_i p_i``."""
    aux_scope: Literal["micro_batch", "global_batch", "sequence"] = "micro_batch"
    """aux_loss: where f_i is counted; global_batch adds one all-reduce of the counts per MoE layer
    and micro-batch and lets single micro-batches stay skewed."""
    aux_gain: float = Field(50.0, gt=0)
    """aux_loss [ours]: router-logit change per step per unit of ``aux_coeff`` per unit of relative
    load excess (how hard the loss gradient pushes the router)."""
    bias_rate: float = Field(1e-3, ge=0)
    """loss_free_bias: update rate u (DeepSeek-V3 / Megatron default 1e-3)."""
    bias_schedule: Literal["sign", "proportional", "inverse_t", "inverse_sqrt_t"] = "sign"
    """loss_free_bias: ``u*sign(mean - c_i)``, ``u*(mean - c_i)/mean``, or the sign rule with
    ``u/t`` or ``u/sqrt(t)`` (POLICIES.md C2)."""
    bip_iterations: int = Field(4, gt=0)
    """bip: dual iterations T per batch."""
    bip_step: float = Field(0.5, gt=0, le=1)
    """bip [ours]: damping of each dual-price iteration (1 = a full correction)."""
    sinkhorn_prob: float = Field(1.0, ge=0, le=1)
    """sinkhorn: share of steps routed by Sinkhorn (selective Sinkhorn: ~0.001-0.01); the rest use top-k."""
    sinkhorn_iterations: int = Field(20, gt=0)
    sinkhorn_tol: float = Field(1e-4, gt=0)
    expert_choice_capacity: float | None = Field(None, gt=0)
    """expert_choice: experts per token on average c (each expert takes ``T*c/E`` tokens); None: top_k."""
    capacity_factor: float | None = Field(None, gt=0)
    """Token-choice kinds: per-expert capacity ``ceil(cf * T*k / E)`` over the EP group's micro-batch;
    the overflow is dropped (None: no dropping)."""


class PhasesCfg(Frozen):
    """Implicit congestion gamma(t) of the router ("Three Phases of Expert Routing", POLICIES.md C7).

    gamma rises linearly from ``gamma_start`` to ``gamma_peak`` (surge), stays there
    (stabilisation), then decays linearly to ``gamma_end`` (relaxation); breakpoints are fractions
    of the simulated steps.
    """

    gamma_start: float = Field(0.0, ge=0)
    gamma_peak: float = Field(2.0, ge=0)
    gamma_end: float = Field(0.5, ge=0)
    surge_end: float = Field(0.1, ge=0, le=1)
    relax_start: float = Field(0.4, ge=0, le=1)

    @model_validator(mode="after")
    def _order(self) -> PhasesCfg:
        if self.relax_start < self.surge_end:
            raise ValueError(f"relax_start={self.relax_start} must be >= surge_end={self.surge_end}")
        return self


class RouterDynamicsCfg(Frozen):
    """How the router's own expert preferences evolve over steps (before any balancing).

    The starting popularity of each layer's experts is the scenario's ``routing`` model (Zipf,
    Dirichlet, ...). Constants marked [ours] are modelling knobs, not measured values.
    """

    score_scale: float = Field(0.1, gt=0)
    """[ours] Spread of router scores across experts: a bias of ``score_scale`` moves an expert's
    selection log-odds by 1 (loss_free_bias and bip act in score units)."""
    restore_rate: float = Field(0.02, ge=0, le=1)
    """[ours] Per step, the share of a learned balancing correction the language-model loss pulls
    back towards the router's natural preference (what keeps aux-loss balance imperfect)."""
    drift_sigma: float = Field(0.0, ge=0)
    """Stationary std of each expert's log-popularity drift (0: none)."""
    drift_tau_steps: float = Field(500.0, gt=0)
    """Time constant of the drift (Ornstein-Uhlenbeck), in steps."""
    microbatch_concentration: float | None = Field(None, gt=0)
    """Dirichlet concentration per expert of one micro-batch's popularity around the step's
    (domain-specific batches: small = skewed micro-batches); None: no extra dispersion."""
    phases: PhasesCfg | None = None
    """Implicit balancing pressure over the run (surge, stabilisation, relaxation); None: off."""
    warmup_steps: int = Field(0, ge=0)
    """Train the router and gate this many steps on expected loads before the first simulated
    step (to simulate mid-training steps with a converged balancer); drift and phases count them."""


class DispatchCfg(Frozen):
    """How the MoE layers' tokens travel to their experts' EP ranks (dispatch) and back (combine);
    see ``moesim/engine/training/dispatch.py``."""

    kind: Literal["direct", "hierarchical"] = "direct"
    """``direct``: every (token, expert slot) is its own message to the rank computing it, a token
    crossing the network once per selected expert off its host (Megatron's all-to-all token
    dispatcher); ``hierarchical``: DeepEP's normal kernels: a token crosses the network once per
    destination host (RDMA to the GPU with the sender's local rank), then NVLink once to each
    destination GPU of that host; combine mirrors it."""
    max_nodes: int | None = Field(None, gt=0)
    """Node-limited routing (DeepSeek-V3: 4): each token's experts lie on at most this many hosts of
    its EP group (the hosts with the highest affinity sums), so a token crosses the network at most
    this many times; None: no limit. Needs ``kind: hierarchical``: direct messages go once per
    expert anyway."""

    @model_validator(mode="after")
    def _limit(self) -> DispatchCfg:
        if self.max_nodes is not None and self.kind != "hierarchical":
            raise ValueError(f"max_nodes={self.max_nodes} bounds the hosts a token is sent to, which saves traffic "
                             "only when a token crosses the network once per host: set kind: hierarchical")
        return self


class StragglerCfg(Frozen):
    """Slow GPUs, transient jitter and degraded links."""

    slow_gpus: int = Field(0, ge=0)
    """Number of persistently slow GPUs, placed at random (seeded)."""
    slow_gpu_ids: tuple[int, ...] = ()
    """Explicit slow GPUs (global ids), in addition to ``slow_gpus`` random ones."""
    slow_factor: float = Field(1.5, ge=1)
    """Compute-time multiplier of a slow GPU."""
    jitter_cv: float = Field(0.0, ge=0)
    """Coefficient of variation of a lognormal per-op, per-GPU compute-time factor (mean 1)."""
    slow_links: int = Field(0, ge=0)
    """Number of hosts whose NICs are degraded, placed at random (seeded)."""
    slow_link_nodes: tuple[int, ...] = ()
    """Explicit hosts with degraded NICs."""
    link_factor: float = Field(0.5, gt=0, le=1)
    """Bandwidth multiplier of a degraded host's NICs."""


class CheckpointCfg(Frozen):
    """Periodic checkpoints: every GPU copies its shard of parameters and optimizer state to host
    memory over its host link, and the host writes it to ``target`` (see
    ``moesim/engine/training/checkpoint.py``; restarts read it back the same way)."""

    interval_steps: int = Field(1000, gt=0)
    target: Literal["remote", "local_nvme"] = "remote"
    """``remote``: a shared store reached through each host's NICs (the topology's
    ``nics_per_node x nic_bandwidth``), all hosts together capped at ``storage_bytes_per_s``;
    ``local_nvme``: each host's own NVMe at ``nvme_bytes_per_s``."""
    storage_bytes_per_s: BytesPerS = 1e12
    """target=remote: aggregate write (and read) bandwidth of the checkpoint storage system."""
    nvme_bytes_per_s: BytesPerS | None = None
    """target=local_nvme: write (and read) bandwidth of one host's NVMe drives together (required
    there; e.g. ``25GB/s`` for eight Gen4 drives striped)."""
    parallel_save: bool = True
    """Bytes held by several data-parallel copies (parameters, and optimizer states with ZeRO-0)
    are written once, split evenly over the copies (Megatron's fully parallel save); false: the
    first data-parallel rank writes them all (DeepSpeed's layout), so its hosts write more."""
    async_save: bool = True
    """Training blocks only while each GPU copies its shard to host memory (over PCIe); the write to
    storage overlaps the following steps, and a failure before it ends falls back to the previous
    checkpoint. False: training blocks for the copy and the write."""

    @model_validator(mode="after")
    def _target(self) -> CheckpointCfg:
        if self.target == "local_nvme" and self.nvme_bytes_per_s is None:
            raise ValueError("target=local_nvme needs nvme_bytes_per_s (one host's NVMe write bandwidth, e.g. "
                             "25GB/s), or use target=remote with storage_bytes_per_s")
        if self.target == "remote" and self.nvme_bytes_per_s is not None:
            raise ValueError("nvme_bytes_per_s is only used with target=local_nvme; drop it or set target: local_nvme")
        return self


class FailureCfg(Frozen):
    """GPU / node failures over the whole training run, each followed by a restart from the last checkpoint."""

    gpu_mtbf_hours: float | None = Field(None, gt=0)
    """Mean time between failures of one GPU (None: no random GPU failures)."""
    node_mtbf_hours: float | None = Field(None, gt=0)
    """Mean time between failures of one host, beyond its GPUs (None: none)."""
    inject_at_s: tuple[float, ...] = ()
    """Failures at these wall-clock times of the run (what-ifs and tests), on top of random ones."""
    restart_s: Seconds = 600.0
    """Detection, rescheduling and re-initialisation time after a failure (checkpoint load extra)."""


class TrainingCfg(Frozen):
    """Simulate training steps instead of serving (see the module doc)."""

    parallel: ParallelCfg = ParallelCfg()
    schedule: ScheduleCfg = ScheduleCfg()
    data: TrainDataCfg = TrainDataCfg()
    optimizer: OptimizerCfg = OptimizerCfg()
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation: none, the ``recompute_modules`` (selective), or whole layers (full)."""
    recompute_modules: tuple[RecomputeModule, ...] = ("core_attn",)
    """recompute=selective: which modules' activations are dropped and recomputed in backward."""
    moe_activation_dtype: Dtype = "bf16"
    """Dtype of the routed experts' saved inputs and SwiGLU activations (``fp8``: DeepSeek-V3's
    low-precision activation caching); expert outputs stay in bf16."""
    gate: GateCfg = GateCfg()
    router: RouterDynamicsCfg = RouterDynamicsCfg()
    dispatch: DispatchCfg = DispatchCfg()
    mtp_depth: int = Field(0, ge=0)
    """Multi-token prediction modules (DeepSeek-V3: 1), on the last pipeline chunk: each adds one
    transformer block (MoE for MoE models), an RMSNorm'd ``2d -> d`` projection, a lookup in the
    shared embedding and a pass through the shared output head (``moesim/engine/training/mtp.py``)."""
    stragglers: StragglerCfg = StragglerCfg()
    checkpoint: CheckpointCfg = CheckpointCfg()
    failures: FailureCfg = FailureCfg()
    steps: int = Field(10, gt=0)
    """Training steps simulated (each with its own routing, data and jitter draws)."""
    samples_per_step: int = Field(8, gt=0)
    """Routing draws per step; every (micro-batch, pipeline chunk) op picks one at random."""
    detail_step: int | None = Field(0, ge=0)
    """Step whose per-op timeline is recorded for the report (None: none)."""
    train_tokens: float | None = Field(None, gt=0)
    """Tokens of the whole run, for time-to-train, GPU-hours and failures (None: the simulated steps)."""
    hbm_utilization: float = Field(0.95, gt=0, le=1)
    """Share of HBM usable by parameters, gradients, optimizer states and activations."""
    memory_reserve_bytes: NonNegBytes = 2 * units.GiB
    """Per-GPU allowance for the CUDA context, communication buffers and fragmentation."""
