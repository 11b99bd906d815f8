"""Derived sizes of a model: parameters per block, KV-cache bytes, attention FLOPs per token pair.

All counts are per layer unless the name says otherwise; bytes use the deployment's dtypes.
FFNs are gated (SwiGLU: gate, up, down = 3 matrices of ``hidden x intermediate``).
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.config.schema import DTYPE_BYTES, ModelSpec

__all__ = ["ModelShape"]


@dataclass(frozen=True)
class ModelShape:
    """Sizes derived from a ModelSpec and the weight / KV / activation dtypes."""

    model: ModelSpec
    weight_bytes_per_param: float = 2.0
    kv_bytes_per_elem: float = 2.0
    act_bytes_per_elem: float = 2.0

    @classmethod
    def build(cls, model: ModelSpec, *, weight_dtype: str = "bf16", kv_dtype: str = "bf16",
              activation_dtype: str = "bf16") -> ModelShape:
        """Shape with bytes per element taken from dtype names."""
        return cls(model, DTYPE_BYTES[weight_dtype], DTYPE_BYTES[kv_dtype], DTYPE_BYTES[activation_dtype])

    # ----------------------------------------------------------------- parameters
    @property
    def attn_params(self) -> int:
        """Q/K/V/O projection parameters of one attention block."""
        a, d = self.model.attention, self.model.hidden_size
        if a.kind == "mla":
            assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None and a.v_head_dim is not None
            nope = a.head_dim - a.qk_rope_head_dim
            q = (d * a.q_lora_rank + a.q_lora_rank * a.n_heads * a.head_dim) if a.q_lora_rank else d * a.n_heads * a.head_dim
            kv = d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank * a.n_heads * (nope + a.v_head_dim)
            return q + kv + a.n_heads * a.v_head_dim * d
        return d * a.head_dim * (2 * a.n_heads + 2 * a.n_kv_heads)

    def ffn_params(self, intermediate: int) -> int:
        """Parameters of one gated FFN (3 matrices)."""
        return 3 * self.model.hidden_size * intermediate

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (0 for a dense model)."""
        return 0 if self.model.moe is None else self.ffn_params(self.model.moe.expert_intermediate)

    @property
    def shared_params(self) -> int:
        """Shared-expert parameters of one MoE layer (all shared experts together)."""
        moe = self.model.moe
        if moe is None or moe.n_shared_experts == 0:
            return 0
        return moe.n_shared_experts * self.ffn_params(moe.shared_intermediate or moe.expert_intermediate)

    @property
    def router_params(self) -> int:
        """Gate parameters of one MoE layer."""
        moe = self.model.moe
        return 0 if moe is None else self.model.hidden_size * moe.n_routed_experts

    @property
    def dense_ffn_params(self) -> int:
        """FFN parameters of one dense layer (0 if the model has none)."""
        f = self.model.dense_intermediate
        return 0 if f is None else self.ffn_params(f)

    @property
    def embedding_params(self) -> int:
        """Input embedding + LM head parameters (one matrix if tied)."""
        m = self.model
        return m.vocab_size * m.hidden_size * (1 if m.tied_embeddings else 2)

    @property
    def n_dense_layers(self) -> int:
        return self.model.n_layers - self.model.n_moe_layers

    def total_params(self) -> int:
        """All parameters (every routed expert counted)."""
        m = self.model
        per_moe = self.shared_params + self.router_params + (m.moe.n_routed_experts * self.expert_params if m.moe else 0)
        return (m.n_layers * self.attn_params + self.n_dense_layers * self.dense_ffn_params
                + m.n_moe_layers * per_moe + self.embedding_params)

    def active_params(self) -> int:
        """Parameters touched by one token (top-k routed experts)."""
        m = self.model
        per_moe = self.shared_params + self.router_params + (m.moe.top_k * self.expert_params if m.moe else 0)
        return (m.n_layers * self.attn_params + self.n_dense_layers * self.dense_ffn_params
                + m.n_moe_layers * per_moe + self.embedding_params)

    # ----------------------------------------------------------------- attention core
    @property
    def kv_elems_per_token(self) -> int:
        """KV-cache elements one token stores in one layer (MLA: the compressed latent + rope key)."""
        a = self.model.attention
        if a.kind == "mla":
            assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None
            return a.kv_lora_rank + a.qk_rope_head_dim
        return 2 * a.n_kv_heads * a.head_dim

    def kv_bytes_per_token_per_gpu(self, attention_tp: int) -> float:
        """KV bytes one token occupies on one GPU of a TP group, summed over layers.

        GQA/MHA shard KV heads over TP ranks (a rank keeps at least one head: replicated when
        tp > kv heads); the MLA latent cannot be split by heads, so every TP rank holds all of it.
        """
        a = self.model.attention
        share = 1.0 if a.kind == "mla" else max(1.0 / attention_tp, 1.0 / a.n_kv_heads)
        return self.model.n_layers * self.kv_elems_per_token * self.kv_bytes_per_elem * share

    def attn_flops_per_pair(self, *, decode: bool) -> float:
        """Attention-core FLOPs per (query token, context token) pair per layer, all heads.

        MHA/GQA: QK^T and PV, 4·heads·head_dim. MLA prefill runs uncompressed heads
        (2·h·(qk_dim) + 2·h·v_dim); MLA decode runs in the latent space (absorbed weights):
        2·h·(kv_lora + rope) + 2·h·kv_lora.
        """
        a = self.model.attention
        if a.kind != "mla":
            return 4.0 * a.n_heads * a.head_dim
        assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None and a.v_head_dim is not None
        if decode:
            return 2.0 * a.n_heads * (2 * a.kv_lora_rank + a.qk_rope_head_dim)
        return 2.0 * a.n_heads * (a.head_dim + a.v_head_dim)

    def layer_windows(self) -> tuple[int, int | None]:
        """(number of sliding-window layers, window tokens) — (0, None) without sliding windows."""
        a = self.model.attention
        if a.sliding_window is None or a.sliding_window_layer_fraction == 0:
            return 0, None
        return round(self.model.n_layers * a.sliding_window_layer_fraction), a.sliding_window
