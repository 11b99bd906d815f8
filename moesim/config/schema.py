"""Pydantic models of a scenario. Validated once at load, then frozen.

Every model forbids unknown keys, so a typo'd key is an error naming its dotted path. Sizes and
rates accept human strings (``"80GiB"``, ``"3.35TB/s"``) and are stored in SI units.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from moesim.core import units

__all__ = [
    "AttentionSpec", "CostCfg", "DeploymentCfg", "EngineCfg", "GpuSpec", "HardwareCfg", "ModelSpec",
    "MoESpec", "RouterCfg", "RoutingLoadCfg", "Scenario", "SchedulerCfg", "SloCfg", "WorkloadCfg",
]

Bytes = Annotated[float, BeforeValidator(units.parse_bytes), Field(gt=0)]
BytesPerS = Annotated[float, BeforeValidator(units.parse_rate), Field(gt=0)]
Seconds = Annotated[float, BeforeValidator(units.parse_seconds), Field(ge=0)]
Flops = Annotated[float, BeforeValidator(units.parse_flops), Field(gt=0)]
Dtype = Literal["fp32", "bf16", "fp16", "fp8", "fp4"]
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}


class Frozen(BaseModel):
    """Base for every config model: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- model architecture
class AttentionSpec(Frozen):
    """Attention block shape. MLA uses the latent (compressed) KV cache of DeepSeek-V2/V3."""

    kind: Literal["mha", "gqa", "mla"]
    n_heads: int = Field(gt=0)
    n_kv_heads: int = Field(gt=0)
    """KV heads (= n_heads for MHA; ignored for MLA, whose cache is one latent per token)."""
    head_dim: int = Field(gt=0)
    """Per-head dim of q/k/v (MLA: the q/k head dim = qk_nope_head_dim + qk_rope_head_dim)."""
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    sliding_window: int | None = None
    """Window (tokens) of sliding-window layers, or None for full attention everywhere."""
    sliding_window_layer_fraction: float = Field(0.0, ge=0, le=1)
    """Fraction of layers that use the sliding window (gpt-oss alternates: 0.5)."""

    @model_validator(mode="after")
    def _mla_fields(self) -> AttentionSpec:
        if self.kind == "mla" and (self.kv_lora_rank is None or self.qk_rope_head_dim is None or self.v_head_dim is None):
            raise ValueError("kind=mla needs kv_lora_rank, qk_rope_head_dim and v_head_dim")
        if self.kind != "mla" and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        return self


class MoESpec(Frozen):
    """Routed and shared experts of each MoE layer (gated 3-matrix FFNs)."""

    n_routed_experts: int = Field(gt=0)
    top_k: int = Field(gt=0)
    expert_intermediate: int = Field(gt=0)
    n_shared_experts: int = Field(0, ge=0)
    shared_intermediate: int | None = None
    """Intermediate size of each shared expert (defaults to expert_intermediate)."""

    @model_validator(mode="after")
    def _k_le_e(self) -> MoESpec:
        if self.top_k > self.n_routed_experts:
            raise ValueError(f"top_k={self.top_k} exceeds n_routed_experts={self.n_routed_experts}")
        return self


class ModelSpec(Frozen):
    """A transformer's architecture; dense when ``moe`` is None."""

    name: str
    source: str = ""
    """Where the numbers come from (model card / config.json URL)."""
    n_layers: int = Field(gt=0)
    first_dense_layers: int = Field(0, ge=0)
    """Leading layers with a dense FFN (DeepSeek-V3: 3). All later layers are MoE."""
    hidden_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    dense_intermediate: int | None = None
    """FFN intermediate size of dense layers (required when there are any)."""
    attention: AttentionSpec
    moe: MoESpec | None = None
    max_context: int = Field(131072, gt=0)
    tied_embeddings: bool = False

    @model_validator(mode="after")
    def _layers(self) -> ModelSpec:
        n_dense = self.n_layers if self.moe is None else self.first_dense_layers
        if n_dense > self.n_layers:
            raise ValueError(f"first_dense_layers={n_dense} exceeds n_layers={self.n_layers}")
        if n_dense and self.dense_intermediate is None:
            raise ValueError("dense layers need dense_intermediate")
        return self

    @property
    def n_moe_layers(self) -> int:
        """Number of MoE layers (0 for a dense model)."""
        return 0 if self.moe is None else self.n_layers - self.first_dense_layers


# --------------------------------------------------------------------------- hardware
class GpuSpec(Frozen):
    """One GPU model's datasheet figures (dense, no sparsity), all in SI units."""

    name: str
    source: str = ""
    peak_flops: dict[Dtype, Flops]
    """Peak dense tensor FLOP/s per dtype."""
    hbm_bytes: Bytes
    hbm_bytes_per_s: BytesPerS
    nvlink_bytes_per_s: float = Field(0.0, ge=0)
    """NVLink bandwidth per GPU per direction (0 = no NVLink)."""
    pcie_bytes_per_s: BytesPerS
    """Host link bandwidth per direction."""
    sm_count: int | None = None

    def flops_for(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype``, falling back to bf16 when the GPU lacks a faster path."""
        return float(self.peak_flops.get(dtype, self.peak_flops["bf16"]))  # type: ignore[index]


class CostCfg(Frozen):
    """Roofline efficiency factors and fixed overheads (the calibration issue replaces them)."""

    kind: Literal["roofline", "constant"] = "roofline"
    compute_efficiency: float = Field(0.7, gt=0, le=1)
    """Achieved / peak FLOP/s for large GEMMs."""
    memory_efficiency: float = Field(0.8, gt=0, le=1)
    """Achieved / peak HBM bytes/s for streaming kernels."""
    attention_efficiency: float = Field(0.5, gt=0, le=1)
    """Achieved / peak FLOP/s of prefill attention kernels."""
    network_efficiency: float = Field(0.8, gt=0, le=1)
    """Achieved / nominal bandwidth of collectives."""
    gemm_tile_rows: int = Field(128, ge=1)
    """Row tile of grouped expert GEMMs: each expert's tokens are padded to a multiple (1 = off)."""
    kernel_overhead_s: Seconds = 4e-6
    """Fixed launch cost per kernel (x kernels per layer)."""
    host_overhead_s: Seconds = 2e-3
    """Per forward pass host time: scheduling, sampling, detokenisation."""
    constant_pass_s: Seconds = 0.01
    """kind=constant: every forward pass takes this long (for tests and queueing checks)."""


class NetworkCfg(Frozen):
    """How communication is costed (see docs/scenarios.md, network section)."""

    model: Literal["simple", "flow"] = "flow"
    """``flow``: collectives are batches of flows sharing links by max-min fairness on the
    topology's real paths, per-link bytes are recorded, and replicas whose traffic crosses the
    same links slow each other down. ``simple``: closed forms on pair bottlenecks, no sharing."""
    ecmp: Literal["split", "hash"] = "split"
    """Equal-cost paths: split each flow evenly, or hash each (src, dst) pair onto one path."""
    all_reduce: Literal["ring", "auto"] = "auto"
    """TP all-reduce algorithm: ring, or the cheapest of ring / two-shot / one-shot."""
    contention: bool = True
    """model=flow: replicas whose traffic crosses the same links slow each other down (those
    replicas step pass by pass instead of fast-forwarding). False: each replica has the network to itself."""
    all_to_all: Literal["congestion", "maxmin"] = "congestion"
    """model=flow: cost dispatch / combine by the per-link congestion bound on the real paths
    (vectorised, fast), or solve each as a max-min batch with completions (exact, ~ms each)."""


class HardwareCfg(Frozen):
    """Which GPU, which cluster topology, and how costs are modelled."""

    gpu: str | GpuSpec = "h100-sxm"
    """GPU preset name (``moesim presets``) or an inline spec."""
    topology: str = "h100-8gpu-node"
    """Topology preset name or a path to a topology YAML."""
    calibration: str | None = None
    """Path to a measured calibration profile (moesim calibrate); None = roofline."""
    cost: CostCfg = CostCfg()
    network: NetworkCfg = NetworkCfg()
    faults: tuple[FaultSpec, ...] = ()
    """Link / NIC / switch faults at simulated times: ``{at_s, kind: degrade|fail, target, factor}``;
    traffic reroutes from then on, and a fault that cuts GPUs off is reported at setup."""


class DeploymentCfg(Frozen):
    """How replicas map onto GPUs.

    Convention (as vLLM / SGLang deploy MoE): each replica owns ``gpus_per_replica`` consecutive
    GPUs of the topology. Attention runs ``attention_tp`` x ``attention_dp`` over them; the MoE
    layers run ``ep`` x ``expert_tp`` over the *same* GPUs (expert e lives on EP rank
    ``e // (E / ep)``, contiguous placement). Tokens leave attention spread evenly over all GPUs of
    the replica and are dispatched to their experts' ranks by an all-to-all, then combined back.
    """

    replicas: int = Field(1, gt=0)
    gpus_per_replica: int = Field(8, gt=0)
    attention_tp: int = Field(8, gt=0)
    attention_dp: int = Field(1, gt=0)
    ep: int = Field(8, gt=0)
    expert_tp: int = Field(1, gt=0)
    weight_dtype: Dtype = "bf16"
    kv_dtype: Dtype = "bf16"
    activation_dtype: Dtype = "bf16"
    prefill_replicas: int = Field(0, ge=0)
    """Disaggregated prefill / decode: the first ``prefill_replicas`` replicas only prefill, the
    others only decode; a prompt's KV cache moves from its prefill replica to a decode replica
    over the network when its prefill ends (0: every replica does both)."""

    @model_validator(mode="after")
    def _divides(self) -> DeploymentCfg:
        if self.prefill_replicas and self.prefill_replicas >= self.replicas:
            raise ValueError(
                f"prefill_replicas={self.prefill_replicas} leaves no decode replica out of replicas={self.replicas}; "
                "raise replicas or lower prefill_replicas (0 = no disaggregation)")
        g = self.gpus_per_replica
        if self.attention_tp * self.attention_dp != g:
            raise ValueError(
                f"attention_tp x attention_dp = {self.attention_tp}x{self.attention_dp} = "
                f"{self.attention_tp * self.attention_dp} must equal gpus_per_replica={g}; "
                "change attention_tp or attention_dp")
        if self.ep * self.expert_tp != g:
            raise ValueError(
                f"ep x expert_tp = {self.ep}x{self.expert_tp} = {self.ep * self.expert_tp} must equal "
                f"gpus_per_replica={g}; change ep or expert_tp")
        return self


class SchedulerCfg(Frozen):
    """Continuous batching with chunked prefill under a token budget (vLLM v1 style)."""

    kind: Literal["continuous"] = "continuous"
    max_num_seqs: int = Field(256, gt=0)
    """Most sequences in one forward pass."""
    max_batched_tokens: int = Field(8192, gt=0)
    """Token budget of one forward pass (decode tokens + prefill chunk tokens)."""
    chunked_prefill: bool = True
    """Split long prompts into chunks that fill the budget left after decodes."""
    kv_block_tokens: int = Field(16, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of HBM moesim may use for weights + activations + KV (like vLLM's flag)."""
    preemption: Literal["recompute"] = "recompute"
    """When KV runs out the newest running request is evicted and later re-prefilled."""


class RouterCfg(Frozen):
    """Request router across replicas (``policies/router``)."""

    kind: Literal["round_robin", "least_outstanding"] = "round_robin"


class LengthDist(Frozen):
    """A token-length distribution: fixed, uniform [low, high], or lognormal(mean, cv)."""

    kind: Literal["fixed", "uniform", "lognormal"] = "lognormal"
    mean: float = Field(512, gt=0)
    cv: float = Field(1.0, ge=0)
    low: int = Field(1, gt=0)
    high: int = Field(4096, gt=0)


class SyntheticWorkloadCfg(Frozen):
    """Synthetic arrivals: Poisson, or gamma inter-arrivals with coefficient of variation ``cv``."""

    kind: Literal["poisson", "gamma"] = "gamma"
    rate_per_s: float = Field(4.0, gt=0)
    cv: float = Field(2.0, gt=0)
    """Coefficient of variation of inter-arrival times (gamma; >1 is bursty)."""
    duration_s: Seconds = 180.0
    prompt_tokens: LengthDist = LengthDist(mean=1024, cv=1.0, low=16, high=8192)
    output_tokens: LengthDist = LengthDist(mean=192, cv=1.0, low=1, high=2048)


class TraceWorkloadCfg(Frozen):
    """Replay the Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)."""

    kind: Literal["azure_trace"] = "azure_trace"
    path: str
    """CSV path; relative paths resolve against the scenario file's folder, then the cwd."""
    time_scale: float = Field(1.0, gt=0)
    """Multiply inter-arrival gaps by this (0.5 = twice the rate)."""
    start_s: Seconds = 0.0
    """Window start, seconds after the first request."""
    duration_s: Seconds | None = None
    """Window length in trace seconds (None = to the end)."""
    max_requests: int | None = Field(None, gt=0)


WorkloadCfg = Annotated[Union[SyntheticWorkloadCfg, TraceWorkloadCfg], Field(discriminator="kind")]


class RoutingLoadCfg(Frozen):
    """Per-pass expert-routing load generator (tokens -> experts counts per MoE layer).

    Stationary kinds (every pass an independent draw; the engine may pool draws): ``uniform``,
    ``zipf``, ``hot_experts`` (LLEP "r:h"), ``dirichlet`` and ``correlated``. Non-stationary
    kinds (each pass advances the model's time; draw with ``next_pass``): ``drift``, ``trace``
    and ``fitted`` (unless ``fit_drift`` is false). See ``moesim/workload/routing_load.py`` and
    ``moesim/workload/routing_dynamics.py``.
    """

    kind: Literal["uniform", "zipf", "hot_experts", "dirichlet", "drift", "correlated", "trace", "fitted"] = "zipf"
    zipf_s: float = Field(1.0, ge=0)
    """Zipf exponent: expert of popularity rank i gets weight 1/i^s."""
    hot_fraction: float = Field(0.5, ge=0, le=1)
    """hot_experts: share r of tokens whose top-k slots all go to the hot experts."""
    hot_experts: int = Field(1, gt=0)
    """hot_experts: number h of hot experts (0..h-1)."""
    shuffle_per_layer: bool = True
    """Each layer gets its own random popularity order (else expert 0 is hottest everywhere)."""
    samples_per_shape: int = Field(16, gt=0)
    """Distinct routing draws kept per token count; each pass picks one at random (speed)."""
    dirichlet_alpha: float = Field(1.0, gt=0)
    """dirichlet: concentration alpha of each layer's slot shares ~ Dirichlet(alpha * 1), drawn once.
    Small alpha (0.1) puts most tokens on a few experts; large alpha (100) is nearly uniform. Also the
    base popularity of drift / correlated when ``popularity: dirichlet``."""
    popularity: Literal["zipf", "dirichlet"] = "zipf"
    """drift, correlated: the mean per-layer popularity they start from: Zipf(``zipf_s``, with
    ``shuffle_per_layer``) or Dirichlet(``dirichlet_alpha``)."""
    drift_tau_passes: float = Field(1000.0, gt=0)
    """drift: time constant tau of the log-popularity Ornstein-Uhlenbeck process, in forward passes
    (lag-1 autocorrelation exp(-1/tau)); for a time constant in seconds use tau_s / mean pass time."""
    drift_sigma: float = Field(0.5, ge=0)
    """drift: stationary standard deviation of each expert's log-popularity around its mean
    (0 = no drift: the model becomes stationary)."""
    layer_correlation: float | str = 0.5
    """correlated: strength rho in [0, 1] of the expert-to-expert coupling between consecutive layers
    (0 = layers independent, 1 = a token's next-layer experts are set by its current ones), or the
    path of a ``.npy`` / ``.npz`` file with transition matrices ``[n_layers - 1, E, E]`` (rows are
    normalised; relative paths resolve against the scenario folder, then the cwd)."""
    trace_path: str | None = None
    """trace, fitted: a moesim routing trace (``.npz``, see traces/README.md) or an ESFT
    expert-routing folder; relative paths resolve against the scenario folder, then the cwd."""
    trace_cycle: bool = True
    """trace: start again at the beginning when the trace ends (false: running past the end is an error)."""
    trace_tokens_per_step: int | None = Field(None, gt=0)
    """trace, fitted: re-bin a token-level trace into steps of this many tokens (the grain of the
    drift fit and of count-only replay). None keeps the file's steps (ESFT folders: 1024 tokens)."""
    fit_drift: bool = True
    """fitted: also reproduce the trace's temporal drift (non-stationary); false gives a stationary
    generator from the fitted mean popularity and cross-layer transitions."""

    @field_validator("layer_correlation", mode="before")
    @classmethod
    def _correlation_value(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                if not value.strip():
                    raise ValueError("layer_correlation: give a number in [0, 1] or a file path") from None
                return value
        return value

    @model_validator(mode="after")
    def _kind_needs(self) -> RoutingLoadCfg:
        if isinstance(self.layer_correlation, float) and not 0.0 <= self.layer_correlation <= 1.0:
            raise ValueError(f"layer_correlation={self.layer_correlation} must be in [0, 1] (or a file path)")
        if self.kind in ("trace", "fitted") and not self.trace_path:
            raise ValueError(f"kind={self.kind} needs trace_path (a moesim .npz routing trace or an ESFT folder)")
        return self


class SloCfg(Frozen):
    """Service-level objectives for goodput: a request is good if it meets both."""

    ttft_s: Seconds = 2.0
    tpot_s: Seconds = 0.1


class EngineCfg(Frozen):
    """Simulation controls."""

    fast_forward: bool = True
    """Advance runs of decode passes with an unchanged batch in one event (same results)."""
    horizon_s: Seconds | None = None
    """Stop at this simulated time (None: when every request has finished)."""
    timeseries_bin_s: Annotated[float, BeforeValidator(units.parse_seconds), Field(gt=0)] = 1.0
    """Bin width of the over-time series in the summary and report."""


class Scenario(Frozen):
    """A complete, validated scenario."""

    name: str = "scenario"
    seed: int = 0
    model: str | ModelSpec = "olmoe-1b-7b"
    """Model preset name or an inline spec."""
    hardware: HardwareCfg = Field(default_factory=lambda: HardwareCfg())
    deployment: DeploymentCfg = DeploymentCfg()
    scheduler: SchedulerCfg = SchedulerCfg()
    router: RouterCfg = RouterCfg()
    workload: WorkloadCfg = SyntheticWorkloadCfg()
    routing: RoutingLoadCfg = RoutingLoadCfg()
    placement: PlacementCfg = Field(default_factory=lambda: PlacementCfg())
    """Expert placement over the EP ranks of each replica."""
    balance: BalanceCfg = Field(default_factory=lambda: BalanceCfg())
    """Runtime token balancing of each pass."""
    slo: SloCfg = SloCfg()
    engine: EngineCfg = EngineCfg()
    training: TrainingCfg | None = None
    """Simulate training steps (issue 6) instead of serving when set."""


# moe.py builds on Frozen above, so its sections are imported last and resolved by a rebuild.
from moesim.config.moe import BalanceCfg, PlacementCfg  # noqa: E402
from moesim.config.faults import FaultSpec  # noqa: E402

HardwareCfg.model_rebuild()
from moesim.config.training import TrainingCfg  # noqa: E402

Scenario.model_rebuild()
