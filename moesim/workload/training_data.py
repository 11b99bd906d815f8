"""Training batches with variable-length documents: tokens and attention work per micro-batch.

Attention cost is quadratic in a document's length while the linear layers are not, so what
matters per (data-parallel rank, micro-batch) *bin* is its token count and its causal attention
pairs ``sum over document pieces of l (l + 1) / 2`` (attention never crosses documents).

Modes (``TrainDataCfg``):

* no ``documents``: every sample is one full ``seq_len`` document (fixed cost, no draws);
* ``packing`` (default): documents in arrival order are concatenated and cut into samples of
  exactly ``seq_len`` tokens (a document crossing a boundary is split); a bin holds
  ``micro_batch_seqs`` consecutive samples;
* no packing: one document per sample, unpadded; a bin holds ``micro_batch_seqs`` documents, so
  token counts vary;
* ``balance: length_aware`` [ours, in the spirit of Zeppelin / ByteScale]: packing that keeps
  quadratic work apart, then a placement that evens it across ranks. (1) The longest documents
  open one sample each; the remaining documents, longest first, fill the samples' leftover room
  in order (split at room boundaries), so no sample holds two long documents. (2) Samples sorted
  by attention pairs form the bins (``micro_batch_seqs`` consecutive samples each), and bins
  sorted by pairs are grouped ``ranks`` at a time into one micro-batch index. Since the ranks of
  a micro-batch wait for each other (EP synchronises every MoE layer), grouping equal work
  together minimises the sum over micro-batches of the slowest rank. Token counts stay exactly
  ``micro_batch_seqs * seq_len`` per bin.

Documents are truncated to ``seq_len``. Bins are laid out ``[ranks, micro_batches]``: rank r's
micro-batch i is bin ``r * micro_batches + i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config.training import TrainDataCfg
from moesim.workload.synthetic import sample_lengths

__all__ = ["BatchLayout", "training_batch"]

_FIELD = "training.data.documents"


@dataclass(frozen=True)
class BatchLayout:
    """Work per bin: tokens ``[R, m]`` and causal attention pairs ``[R, m]`` (floats), documents drawn."""

    tokens: np.ndarray
    pairs: np.ndarray
    documents: int


def _pairs(lengths: np.ndarray) -> np.ndarray:
    lf = lengths.astype(np.float64)
    return lf * (lf + 1.0) / 2.0


def _draw(cfg: TrainDataCfg, total: int, rng: np.random.Generator) -> np.ndarray:
    """Documents (truncated to seq_len) whose lengths sum to at least ``total`` tokens."""
    assert cfg.documents is not None
    mean = max(1.0, min(cfg.documents.mean, cfg.seq_len))
    parts, have = [], 0
    while have < total:
        n = int((total - have) / mean * 1.1) + 16
        lens = np.minimum(sample_lengths(cfg.documents, n, rng, field=_FIELD), cfg.seq_len)
        parts.append(lens)
        have += int(lens.sum())
    return np.concatenate(parts)


def _packed(lengths: np.ndarray, samples: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and pairs of ``samples`` samples cut from the document stream."""
    total = samples * seq_len
    ends = np.cumsum(lengths)
    cuts = np.union1d(ends[ends < total], np.arange(seq_len, total, seq_len))
    bounds = np.concatenate(([0], cuts, [total]))
    piece = np.diff(bounds)
    sample = bounds[:-1] // seq_len
    pairs = np.bincount(sample, weights=_pairs(piece), minlength=samples)
    return np.full(samples, float(seq_len)), pairs


def _length_aware(lengths: np.ndarray, samples: int, seq_len: int) -> np.ndarray:
    """Pairs of ``samples`` samples: the longest documents open a sample each, the rest fill the
    leftover room longest first (module doc, step 1)."""
    order = np.sort(lengths)[::-1]
    first = order[:samples]
    pairs = np.zeros(samples)
    pairs[:first.size] = _pairs(first)
    room = np.full(samples, seq_len, dtype=np.int64)
    room[:first.size] -= first
    total = int(room.sum())
    if total == 0:
        return pairs
    room_ends = np.cumsum(room)
    ends = np.cumsum(order[samples:])
    cuts = np.union1d(ends[ends < total], room_ends[:-1])
    bounds = np.concatenate(([0], cuts, [total]))
    piece = np.diff(bounds)
    sample = np.searchsorted(room_ends, bounds[:-1], side="right")
    return pairs + np.bincount(sample, weights=_pairs(piece), minlength=samples)


def training_batch(cfg: TrainDataCfg, *, ranks: int, micro_batches: int, rng: np.random.Generator) -> BatchLayout:
    """The ``[ranks, micro_batches]`` bins of one step (module doc)."""
    shape = (ranks, micro_batches)
    bins = ranks * micro_batches
    s, per_bin = cfg.seq_len, cfg.micro_batch_seqs
    if cfg.documents is None:
        full = float(s * per_bin)
        return BatchLayout(np.full(shape, full), np.full(shape, per_bin * s * (s + 1) / 2.0), bins * per_bin)
    if not cfg.packing and cfg.balance == "none":
        lens = np.minimum(sample_lengths(cfg.documents, bins * per_bin, rng, field=_FIELD), s)
        grouped = lens.reshape(bins, per_bin)
        tokens = grouped.sum(axis=1).astype(np.float64)
        pairs = _pairs(grouped).sum(axis=1)
        return BatchLayout(tokens.reshape(shape), pairs.reshape(shape), int(lens.size))
    lens = _draw(cfg, bins * per_bin * s, rng)
    used = int(np.searchsorted(np.cumsum(lens), bins * per_bin * s)) + 1   # documents the step consumes
    if cfg.balance == "length_aware":
        sample_pairs = np.sort(_length_aware(lens[:used], bins * per_bin, s))[::-1]
        bin_pairs = np.sort(sample_pairs.reshape(bins, per_bin).sum(axis=1))[::-1]
        grouped = bin_pairs.reshape(micro_batches, ranks).T        # micro-batch i: the i-th group of `ranks`
        return BatchLayout(np.full(shape, float(per_bin * s)), np.ascontiguousarray(grouped), used)
    tokens, pairs = _packed(lens, bins * per_bin, s)
    return BatchLayout(tokens.reshape(bins, per_bin).sum(axis=1).reshape(shape),
                       pairs.reshape(bins, per_bin).sum(axis=1).reshape(shape), used)
