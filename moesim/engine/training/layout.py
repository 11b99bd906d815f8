"""Which transformer layers each model chunk (pipeline stage x virtual stage) holds.

Chunk ``c`` of ``C = pp * v`` holds a contiguous run of layers in model order; the embedding sits
on chunk 0 and the LM head (with the loss) on chunk ``C - 1``. The default split is as even as
possible, and when the layers do not divide evenly the *lighter* chunks are the first and last
(they also carry the embedding and the head), then alternate inwards. Multi-token prediction
(``mtp_depth`` = D, ``mtp.py``): the model's last D layers are the MTP blocks; they go on the
last chunk on top of its share of the other layers (``layers_per_chunk`` lists those).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config.schema import ModelSpec
from moesim.core.errors import ConfigError

__all__ = ["ChunkLayout", "chunk_layout"]


@dataclass(frozen=True)
class ChunkLayout:
    """Per-chunk layer counts (arrays of length C) and the MoE layers of each chunk.

    layers ``[C]``; dense ``[C]`` dense-FFN layers; moe ``[C]`` MoE layers; moe_start / moe_stop
    ``[C]``: the chunk's MoE layers are MoE indices ``moe_start[c] .. moe_stop[c] - 1`` (index =
    layer - first_dense_layers); embed / head ``[C]`` bool; mtp ``[C]``: MTP modules on the chunk
    (their blocks are counted in layers / dense / moe too).
    """

    layers: np.ndarray
    dense: np.ndarray
    moe: np.ndarray
    moe_start: np.ndarray
    moe_stop: np.ndarray
    embed: np.ndarray
    head: np.ndarray
    mtp: np.ndarray

    @property
    def chunks(self) -> int:
        """C."""
        return int(self.layers.size)


def _even_split(n_layers: int, chunks: int) -> list[int]:
    base, extra = divmod(n_layers, chunks)
    counts = [base + 1] * chunks
    light = chunks - extra            # chunks that get only `base` layers: ends first, then inwards
    order = []
    lo, hi = 0, chunks - 1
    while lo <= hi:
        order.append(lo)
        if hi != lo:
            order.append(hi)
        lo, hi = lo + 1, hi - 1
    for c in order[:light]:
        counts[c] = base
    return counts


def chunk_layout(model: ModelSpec, chunks: int, layers_per_chunk: tuple[int, ...] | None = None, *,
                 mtp_depth: int = 0) -> ChunkLayout:
    """Split ``model``'s layers over ``chunks`` model chunks (module doc; the last ``mtp_depth``
    layers are MTP blocks, kept on the last chunk)."""
    n = model.n_layers
    main = n - mtp_depth
    if layers_per_chunk is None:
        if main < chunks:
            raise ConfigError(f"{main} layers of {model.name} cannot fill {chunks} model chunks "
                              "(pp x virtual_stages)", field="training.parallel.pp")
        counts = _even_split(main, chunks)
    else:
        counts = list(layers_per_chunk)
        if len(counts) != chunks or sum(counts) != main or min(counts) < 1:
            raise ConfigError(f"layers_per_chunk={counts} must list {chunks} positive counts (pp x virtual_stages) "
                              f"summing to the {main} layers of {model.name}"
                              + (f" (without its {mtp_depth} MTP blocks)" if mtp_depth else ""),
                              field="training.schedule.layers_per_chunk")
    counts[-1] += mtp_depth
    stop = np.cumsum(counts)
    start = stop - np.asarray(counts)
    first_moe = n if model.moe is None else model.first_dense_layers
    dense = np.clip(np.minimum(stop, first_moe) - start, 0, None)
    moe_start = np.clip(start - first_moe, 0, None)
    moe_stop = np.clip(stop - first_moe, 0, None)
    embed = np.zeros(chunks, bool)
    head = np.zeros(chunks, bool)
    embed[0] = head[-1] = True
    mtp = np.zeros(chunks, np.int64)
    mtp[-1] = mtp_depth
    return ChunkLayout(layers=np.asarray(counts), dense=dense, moe=moe_stop - moe_start, moe_start=moe_start,
                       moe_stop=moe_stop, embed=embed, head=head, mtp=mtp)
