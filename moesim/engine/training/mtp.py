"""Multi-token prediction (DeepSeek-V3 sec. 2.2): ``training.mtp_depth`` = D modules on the last chunk.

Module k (1..D) predicts token ``i + k + 1``: ``RMSNorm(h_i)`` and ``RMSNorm(Emb(t_{i+k}))`` are
concatenated and projected ``2d -> d``, go through one transformer block, then through the output
head (shared with the main model) into a cross-entropy loss. How the simulator builds it:

* the block is one more layer of the model (``mtp_model``: ``n_layers + D``, the extra layers of
  the kind of the model's last one: MoE for an MoE model, with its own router and experts),
  placed on the last chunk (``chunk_layout(..., mtp_depth=D)``; ``layout.mtp`` counts the
  modules). Its attention, MoE (routing draws, all-to-all, expert GEMMs), activations,
  parameters, gradients and optimizer states come from the layer models like any layer's;
* ``opcost``: per module the projection GEMM ``t x 2d x d/tp``, the two RMSNorms, one embedding
  lookup and one more pass through the output head (GEMM and fp32 loss), backward 2x;
* parameters (``mtp_params``): the projection ``2 d^2`` and three RMSNorm vectors per module, and
  a copy of the shared embedding on the last chunk's stage unless that stage also holds chunk 0
  (DualPipe puts them together, as DeepSeek-V3 does; Megatron keeps a copy on the last stage) or
  the head already is that copy (tied embeddings);
* the copy's gradient is all-reduced with the first stage's embedding after the data-parallel
  reduction, as Megatron does for tied embeddings (``embedding_copy``; ``dpsync.GradSync``);
* model FLOPs (MFU): ``6 x tokens x`` (the block's active parameters + projection + head).

Not modelled: the projection's and head's activation memory (the main head's logits are not
either), and ZeRO-3 gathers of the projection / embedding copy. With a routing *trace* the trace must have the extra MoE layers.
"""

from __future__ import annotations

import numpy as np

from moesim.config.schema import ModelSpec
from moesim.engine.training.layout import ChunkLayout
from moesim.engine.training.schedule import PipelinePlan

__all__ = ["embedding_copy", "mtp_flops_params", "mtp_model", "mtp_params"]


def mtp_model(model: ModelSpec, depth: int) -> ModelSpec:
    """``model`` with the ``depth`` MTP blocks appended as layers (itself when ``depth == 0``)."""
    if depth == 0:
        return model
    return model.model_copy(update={"n_layers": model.n_layers + depth})


def embedding_copy(model: ModelSpec, layout: ChunkLayout, plan: PipelinePlan) -> bool:
    """Whether the last chunk's stage keeps a copy of the word embedding — for a tied output head
    or for the MTP modules' embedding lookup — because no stage holds both the first and the last
    chunk; the copy's gradient must then be all-reduced with the first stage's embedding."""
    last = layout.chunks - 1
    shares = model.tied_embeddings or bool(layout.mtp[last])
    return shares and last > 0 and not any(0 in held and last in held for held in plan.stage_chunks)


def mtp_params(model: ModelSpec, layout: ChunkLayout, plan: PipelinePlan) -> np.ndarray:
    """``[C]`` MTP parameters of each chunk beyond its blocks (unsharded; module doc)."""
    d = model.hidden_size
    out = layout.mtp * (2.0 * d * d + 3.0 * d)
    last = layout.chunks - 1
    if layout.mtp[last] and not model.tied_embeddings and embedding_copy(model, layout, plan):
        out[last] += model.vocab_size * d            # the shared embedding, copied to the last stage
    return out


def mtp_flops_params(model: ModelSpec, depth: int) -> float:
    """Parameters the MTP modules add to the model FLOPs beyond their blocks: projection + head."""
    d = model.hidden_size
    return float(depth * (2.0 * d * d + model.vocab_size * d))
