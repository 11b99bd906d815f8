"""The training mesh: DP x TP x PP x EP (x CP) mapped onto the topology's GPUs, with its checks.

Rank order (documented contract; tests rely on it). Global GPU ``g`` of the job is

    g = ((pp_rank * dp + dp_rank) * cp + cp_rank) * tp + tp_rank

so TP is innermost (consecutive GPUs, inside one host when ``tp <= gpus_per_node``, which is
required), then CP, then DP, and PP outermost: stage ``s`` owns the ``tp*cp*dp`` consecutive
GPUs ``[s * S, (s + 1) * S)``. The MoE layers of a stage reuse its GPUs as
``expert_tp x ep x expert_dp`` with ``expert_tp`` innermost, then ``ep``: local index
``i = g - s*S = (edp_rank * ep + ep_rank) * expert_tp + etp_rank``. An EP group is therefore
``ep * expert_tp`` consecutive GPUs, i.e. inside the NVLink domain whenever it fits in a host,
and spans the fewest hosts otherwise.

Tokens. With sequence parallelism (on whenever ``tp > 1``) each GPU holds ``1 / (tp*cp)`` of
its micro-batch's tokens, so one MoE layer of an EP group sees
``ep * expert_tp * micro_batch_tokens / (tp * cp)`` tokens, coming from
``max(1, ep*expert_tp / (tp*cp))`` distinct data-parallel ranks: the *bundle* of pipelines that
EP synchronises at every MoE layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.config.schema import ModelSpec
from moesim.config.training import TrainingCfg
from moesim.core.errors import ConfigError

__all__ = ["Mesh", "build_mesh"]

_F = "training.parallel"


@dataclass(frozen=True)
class Mesh:
    """Parallel degrees and the GPU groups they imply (see the module doc for the rank order)."""

    tp: int
    cp: int
    dp: int
    pp: int
    ep: int
    etp: int
    gpus_per_node: int
    micro_batches: int
    """Micro-batches per step on every pipeline (global batch / (dp x micro_batch_seqs))."""

    @property
    def gpus(self) -> int:
        """GPUs of the job."""
        return self.tp * self.cp * self.dp * self.pp

    @property
    def stage_gpus(self) -> int:
        """GPUs of one pipeline stage (``tp * cp * dp``)."""
        return self.tp * self.cp * self.dp

    @property
    def edp(self) -> int:
        """Expert data-parallel degree: EP groups per stage."""
        return self.stage_gpus // (self.ep * self.etp)

    @property
    def bundle_ranks(self) -> int:
        """Distinct data-parallel ranks whose micro-batches meet in one EP group (>= 1)."""
        return max(1, (self.ep * self.etp) // (self.tp * self.cp))

    def gpu(self, *, stage: int, dp_rank: int = 0, cp_rank: int = 0, tp_rank: int = 0) -> int:
        """Global GPU id of a rank (module doc)."""
        return ((stage * self.dp + dp_rank) * self.cp + cp_rank) * self.tp + tp_rank

    def locate(self, gpu: int) -> dict[str, int]:
        """Ranks of GPU ``gpu``: stage, dp, cp, tp, and its expert view edp / ep / etp."""
        stage, local = divmod(gpu, self.stage_gpus)
        rest, tp_rank = divmod(local, self.tp)
        dp_rank, cp_rank = divmod(rest, self.cp)
        erest, etp_rank = divmod(local, self.etp)
        edp_rank, ep_rank = divmod(erest, self.ep)
        return {"stage": stage, "dp": dp_rank, "cp": cp_rank, "tp": tp_rank, "edp": edp_rank, "ep": ep_rank,
                "etp": etp_rank}

    def tp_group(self, stage: int, dp_rank: int = 0, cp_rank: int = 0) -> tuple[int, ...]:
        """The ``tp`` GPUs sharing a layer's weights (consecutive)."""
        first = self.gpu(stage=stage, dp_rank=dp_rank, cp_rank=cp_rank)
        return tuple(range(first, first + self.tp))

    def cp_group(self, stage: int, dp_rank: int = 0, tp_rank: int = 0) -> tuple[int, ...]:
        """The ``cp`` GPUs splitting one sequence."""
        return tuple(self.gpu(stage=stage, dp_rank=dp_rank, cp_rank=c, tp_rank=tp_rank) for c in range(self.cp))

    def dp_group(self, stage: int, tp_rank: int = 0) -> tuple[int, ...]:
        """The ``dp * cp`` GPUs holding the same dense-parameter shard (gradients reduce over them)."""
        return tuple(self.gpu(stage=stage, dp_rank=d, cp_rank=c, tp_rank=tp_rank)
                     for d in range(self.dp) for c in range(self.cp))

    def ep_group(self, stage: int, edp_rank: int = 0) -> tuple[int, ...]:
        """The ``ep * expert_tp`` GPUs of one EP group; EP rank r owns ``[r*etp, (r+1)*etp)`` of it."""
        first = stage * self.stage_gpus + edp_rank * self.ep * self.etp
        return tuple(range(first, first + self.ep * self.etp))

    def expert_dp_group(self, stage: int, ep_rank: int = 0, etp_rank: int = 0) -> tuple[int, ...]:
        """The ``expert_dp`` GPUs holding the same expert shard."""
        base = stage * self.stage_gpus + ep_rank * self.etp + etp_rank
        return tuple(base + e * self.ep * self.etp for e in range(self.edp))

    def group_tokens(self, micro_batch_tokens: int) -> int:
        """Tokens one EP group's MoE layer sees per micro-batch (module doc)."""
        return self.ep * self.etp * micro_batch_tokens // (self.tp * self.cp)


def _need(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise ConfigError(message, field=field)


def build_mesh(cfg: TrainingCfg, model: ModelSpec, *, topology_gpus: int, gpus_per_node: int,
               topology_name: str) -> Mesh:
    """Check the parallel degrees against the model, topology and batch; ConfigError names the field."""
    par, data = cfg.parallel, cfg.data
    gpus = par.gpus or topology_gpus
    _need(gpus <= topology_gpus, f"{_F}.gpus",
          f"{gpus} GPUs requested but topology {topology_name!r} has {topology_gpus}; pick a larger topology")
    inner = par.tp * par.cp * par.pp
    if par.dp is None:
        _need(gpus % inner == 0, f"{_F}.pp",
              f"{gpus} GPUs are not divisible by tp x cp x pp = {par.tp}x{par.cp}x{par.pp} = {inner}; "
              "change tp, cp or pp (or set parallel.gpus)")
        dp = gpus // inner
    else:
        dp = par.dp
        _need(inner * dp == gpus, f"{_F}.dp",
              f"tp x cp x pp x dp = {par.tp}x{par.cp}x{par.pp}x{dp} = {inner * dp} must equal the {gpus} GPUs "
              "of the job; change dp (or leave it unset to derive it) or set parallel.gpus")
    _need(par.tp <= gpus_per_node and gpus_per_node % par.tp == 0, f"{_F}.tp",
          f"tp={par.tp} must divide the {gpus_per_node} GPUs of a host: TP stays inside one NVLink domain")
    a = model.attention
    _need(a.n_heads % par.tp == 0, f"{_F}.tp", f"{a.n_heads} attention heads of {model.name} are not divisible "
                                                  f"by tp={par.tp}")
    if a.kind == "gqa":
        _need(a.n_kv_heads % par.tp == 0 or par.tp % a.n_kv_heads == 0, f"{_F}.tp",
              f"{a.n_kv_heads} KV heads of {model.name} and tp={par.tp}: one must divide the other")
    stage = par.tp * par.cp * dp
    if model.moe is None:
        _need(par.ep == 1 and par.expert_tp == 1, f"{_F}.ep", f"{model.name} is dense: ep and expert_tp must be 1")
    else:
        group = par.ep * par.expert_tp
        _need(group <= stage, f"{_F}.ep",
              f"ep x expert_tp = {par.ep}x{par.expert_tp} = {group} is larger than the {stage} GPUs of a pipeline "
              f"stage (tp x cp x dp = {par.tp}x{par.cp}x{dp}); lower ep or raise dp")
        _need(stage % group == 0, f"{_F}.ep",
              f"ep x expert_tp = {group} must divide the {stage} GPUs of a pipeline stage (tp x cp x dp)")
        _need(model.moe.n_routed_experts % par.ep == 0, f"{_F}.ep",
              f"{model.moe.n_routed_experts} experts of {model.name} are not divisible by ep={par.ep}")
        _need(model.moe.expert_intermediate % par.expert_tp == 0, f"{_F}.expert_tp",
              f"expert intermediate size {model.moe.expert_intermediate} is not divisible by "
              f"expert_tp={par.expert_tp}")
    v = cfg.schedule.virtual_stages
    _need(model.n_layers >= par.pp * v, f"{_F}.pp",
          f"{model.n_layers} layers cannot fill pp x virtual_stages = {par.pp}x{v} = {par.pp * v} model chunks")
    _need(data.seq_len % par.cp == 0, "training.data.seq_len",
          f"seq_len={data.seq_len} must be divisible by cp={par.cp}")
    per_step = dp * data.micro_batch_seqs
    _need(data.global_batch_seqs % per_step == 0, "training.data.global_batch_seqs",
          f"global_batch_seqs={data.global_batch_seqs} must be a multiple of dp x micro_batch_seqs = "
          f"{dp}x{data.micro_batch_seqs} = {per_step}")
    m = data.global_batch_seqs // per_step
    if cfg.schedule.kind == "interleaved_1f1b":
        _need(m % par.pp == 0, "training.data.global_batch_seqs",
              f"interleaved_1f1b needs the {m} micro-batches per pipeline to be a multiple of pp={par.pp}")
    if cfg.schedule.kind == "dualpipe":
        _need(par.pp % 2 == 0, f"{_F}.pp",
              f"dualpipe needs an even pp (rank r holds stages r and pp-1-r), got pp={par.pp}; use an even pp "
              "or another training.schedule.kind")
        _need(m % 2 == 0 and m >= 2 * par.pp, "training.data.global_batch_seqs",
              f"dualpipe feeds half of the micro-batches from each end: it needs an even number of micro-batches "
              f">= 2 x pp = {2 * par.pp}, got {m} (global_batch_seqs / (dp x micro_batch_seqs) = "
              f"{data.global_batch_seqs} / ({dp} x {data.micro_batch_seqs})); raise global_batch_seqs or lower "
              "micro_batch_seqs")
    return Mesh(tp=par.tp, cp=par.cp, dp=dp, pp=par.pp, ep=par.ep, etp=par.expert_tp,
                gpus_per_node=gpus_per_node, micro_batches=m)
