"""Per-GPU HBM budget of an inference replica: weights, activations, and what is left for KV."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.config.schema import DeploymentCfg, GpuSpec, SchedulerCfg
from moesim.core.errors import CapacityError
from moesim.core.units import GiB
from moesim.spec.model import ModelShape

__all__ = ["MemoryBudget", "memory_budget"]


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes on one GPU of a replica and the KV capacity they leave (tokens per DP group)."""

    hbm_bytes: float
    usable_bytes: float
    weight_bytes: float
    activation_bytes: float
    kv_bytes: float
    kv_bytes_per_token: float
    kv_capacity_tokens: int
    """Tokens of KV cache one attention-DP group can hold (each of its GPUs holds its share)."""


def weight_bytes_per_gpu(shape: ModelShape, dep: DeploymentCfg, redundant_experts: int = 0) -> float:
    """Weights one GPU holds: attention/dense/shared/embeddings split by attention TP, experts
    (plus ``redundant_experts`` replica slots per layer) by EP x expert-TP."""
    m = shape.model
    tp_sharded = (m.n_layers * shape.attn_params + shape.n_dense_layers * shape.dense_ffn_params
                  + m.n_moe_layers * (shape.shared_params + shape.router_params) + shape.embedding_params)
    experts = 0.0
    if m.moe is not None:
        experts = (m.n_moe_layers * ((m.moe.n_routed_experts + redundant_experts) / dep.ep)
                   * shape.expert_params / dep.expert_tp)
    return (tp_sharded / dep.attention_tp + experts) * shape.weight_bytes_per_param


def activation_bytes_per_gpu(shape: ModelShape, dep: DeploymentCfg, sched: SchedulerCfg) -> float:
    """Peak transient activations of the largest pass (a vLLM-style profiling estimate).

    Hidden states in and out of a layer, the widest FFN intermediate of this GPU's share,
    and fp32 logits of ``max_num_seqs`` sequences.
    """
    m = shape.model
    widest = max(m.dense_intermediate or 0, (m.moe.expert_intermediate * m.moe.top_k) if m.moe else 0)
    per_token = (4 * m.hidden_size + 2 * widest / dep.attention_tp) * shape.act_bytes_per_elem
    logits = sched.max_num_seqs * m.vocab_size / dep.attention_tp * 4.0
    return sched.max_batched_tokens * per_token + logits


def memory_budget(shape: ModelShape, gpu: GpuSpec, dep: DeploymentCfg, sched: SchedulerCfg, *,
                  redundant_experts: int = 0) -> MemoryBudget:
    """Budget of one GPU; CapacityError naming the fix when the model does not fit."""
    usable = gpu.hbm_bytes * sched.gpu_memory_utilization
    weights = weight_bytes_per_gpu(shape, dep, redundant_experts)
    acts = activation_bytes_per_gpu(shape, dep, sched)
    kv = usable - weights - acts
    per_token = shape.kv_bytes_per_token_per_gpu(dep.attention_tp)
    tokens = int(kv // per_token) if kv > 0 else 0
    tokens -= tokens % sched.kv_block_tokens
    if tokens < sched.kv_block_tokens:
        raise CapacityError(
            f"deployment: {shape.model.name} does not fit on {gpu.name}: weights {weights / GiB:.1f} GiB + "
            f"activations {acts / GiB:.1f} GiB per GPU leave no room for KV cache in "
            f"{usable / GiB:.1f} GiB (hbm x scheduler.gpu_memory_utilization); raise "
            "deployment.gpus_per_replica (with ep / attention_tp), use weight_dtype fp8, "
            "or lower scheduler.max_batched_tokens")
    return MemoryBudget(gpu.hbm_bytes, usable, weights, acts, kv, per_token, tokens)
