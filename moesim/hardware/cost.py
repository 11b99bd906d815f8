"""The CostModel protocol: seconds for the operators of a forward pass on one GPU.

Every method is vectorised: token-count arguments may be numpy arrays of any shape and the
result has that shape. Implementations: ``RooflineCost`` (max of compute and memory time with
efficiency factors), ``ConstantCost`` (zero per operator, a fixed time per pass: for tests and
queueing checks), ``CalibratedCost`` (``hardware/calibrated.py``: measured tables from a profile).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from moesim.config.schema import DTYPE_BYTES, CostCfg, GpuSpec
from moesim.hardware.calibrated import CalibratedCost
from moesim.hardware.profile import Profile

__all__ = ["ConstantCost", "CostModel", "RooflineCost", "build_cost_model"]

ArrayLike = np.ndarray | float | int


@runtime_checkable
class CostModel(Protocol):
    """Operator latencies on one GPU, in seconds."""

    name: str
    host_overhead_s: float
    """Fixed host time per forward pass (scheduling, sampling)."""

    def gemm_s(self, m: ArrayLike, k: int, n: int) -> np.ndarray:
        """``[m, k] x [k, n]`` with weights in the weight dtype; ``m`` tokens (array)."""
        ...

    def grouped_ffn_s(self, tokens_per_expert: np.ndarray, hidden: int, intermediate: int) -> np.ndarray:
        """Gated (SwiGLU) expert FFNs of one GPU: ``tokens_per_expert [..., experts]`` → ``[...]``."""
        ...

    def attention_s(self, *, decode: bool, pairs: ArrayLike, kv_tokens: ArrayLike,
                    flops_per_pair: float, kv_bytes_per_token: float,
                    seqs: ArrayLike | None = None) -> np.ndarray:
        """Attention core of one layer on one GPU.

        ``pairs``: (query, context) token pairs; ``kv_tokens``: context tokens read from the KV
        cache; ``flops_per_pair`` / ``kv_bytes_per_token``: this GPU's share (heads split by TP);
        ``seqs``: number of sequences the pairs and KV tokens belong to (decode: decoding
        sequences, one query each; prefill: prompt chunks), broadcastable with ``pairs``. The
        same KV tokens cost more spread over many short sequences than in a few long ones
        (less work per kernel block, one launch grid row per sequence): a model may use it.
        ``None`` means not known: decode is then taken as one sequence, prefill as the
        equivalent number of fresh prompts ``kv / (2 pairs / kv - 1)``.
        """
        ...

    def memory_s(self, nbytes: ArrayLike) -> np.ndarray:
        """A streaming kernel moving ``nbytes`` through HBM (norms, activations, copies)."""
        ...


class RooflineCost:
    """Roofline: each operator takes max(FLOPs / achieved FLOP/s, bytes / achieved bytes/s)."""

    name = "roofline"

    def __init__(self, gpu: GpuSpec, cfg: CostCfg, *, weight_dtype: str = "bf16",
                 activation_dtype: str = "bf16") -> None:
        self.gpu = gpu
        self.cfg = cfg
        self.flops_per_s = gpu.flops_for(weight_dtype) * cfg.compute_efficiency
        self.attn_flops_per_s = gpu.flops_for(activation_dtype) * cfg.attention_efficiency
        self.bytes_per_s = gpu.hbm_bytes_per_s * cfg.memory_efficiency
        self.wb = DTYPE_BYTES[weight_dtype]
        self.ab = DTYPE_BYTES[activation_dtype]
        self.kernel_s = cfg.kernel_overhead_s
        self.host_overhead_s = cfg.host_overhead_s

    def _roof(self, flops: np.ndarray, nbytes: np.ndarray, flops_per_s: float, kernels: int,
              active: np.ndarray) -> np.ndarray:
        t = np.maximum(flops / flops_per_s, nbytes / self.bytes_per_s) + kernels * self.kernel_s
        return np.where(active, t, 0.0)

    def gemm_s(self, m: ArrayLike, k: int, n: int) -> np.ndarray:
        m = np.asarray(m, dtype=np.float64)
        flops = 2.0 * m * k * n
        nbytes = k * n * self.wb + m * (k + n) * self.ab
        return self._roof(flops, nbytes, self.flops_per_s, 1, m > 0)

    def grouped_ffn_s(self, tokens_per_expert: np.ndarray, hidden: int, intermediate: int) -> np.ndarray:
        """Aggregate roofline of a grouped GEMM whose per-expert rows are padded to ``gemm_tile_rows``.

        The padding is the small-GEMM inefficiency: 3 experts x 10 tokens cost three 128-row tiles
        of math, one expert x 30 tokens one tile; and every active expert streams its weights.
        """
        n = np.asarray(tokens_per_expert, dtype=np.float64)
        total = n.sum(axis=-1)
        active = np.count_nonzero(n, axis=-1)
        tile = self.cfg.gemm_tile_rows
        padded = (np.ceil(n / tile) * tile).sum(axis=-1) if tile > 1 else total
        flops = 6.0 * hidden * intermediate * padded
        nbytes = active * 3.0 * hidden * intermediate * self.wb + total * (2 * hidden + 3 * intermediate) * self.ab
        return self._roof(flops, nbytes, self.flops_per_s, 3, total > 0)

    def attention_s(self, *, decode: bool, pairs: ArrayLike, kv_tokens: ArrayLike,
                    flops_per_pair: float, kv_bytes_per_token: float,
                    seqs: ArrayLike | None = None) -> np.ndarray:
        """FLOPs over the attention rate vs KV bytes over HBM bandwidth, plus one launch.

        ``seqs`` is accepted and not used: a roofline sees only the FLOPs and bytes, which do not
        depend on how the KV tokens split into sequences; that effect (work per block, split-KV
        reductions) is what a calibrated model measures.
        """
        pairs = np.asarray(pairs, dtype=np.float64)
        kv = np.asarray(kv_tokens, dtype=np.float64)
        return self._roof(pairs * flops_per_pair, kv * kv_bytes_per_token, self.attn_flops_per_s, 1, pairs > 0)

    def memory_s(self, nbytes: ArrayLike) -> np.ndarray:
        nbytes = np.asarray(nbytes, dtype=np.float64)
        return np.where(nbytes > 0, nbytes / self.bytes_per_s + self.kernel_s, 0.0)


class ConstantCost:
    """Every operator is free and a forward pass takes ``cfg.constant_pass_s`` of host time."""

    name = "constant"

    def __init__(self, cfg: CostCfg) -> None:
        self.host_overhead_s = cfg.constant_pass_s

    @staticmethod
    def _zero(x: ArrayLike) -> np.ndarray:
        return np.zeros(np.shape(x))

    def gemm_s(self, m: ArrayLike, k: int, n: int) -> np.ndarray:
        return self._zero(m)

    def grouped_ffn_s(self, tokens_per_expert: np.ndarray, hidden: int, intermediate: int) -> np.ndarray:
        return np.zeros(np.shape(tokens_per_expert)[:-1])

    def attention_s(self, *, decode: bool, pairs: ArrayLike, kv_tokens: ArrayLike,
                    flops_per_pair: float, kv_bytes_per_token: float,
                    seqs: ArrayLike | None = None) -> np.ndarray:
        return self._zero(pairs)

    def memory_s(self, nbytes: ArrayLike) -> np.ndarray:
        return self._zero(nbytes)


def build_cost_model(gpu: GpuSpec, cfg: CostCfg, *, weight_dtype: str, activation_dtype: str,
                     profile: Profile | None = None, profile_mode: str = "eager") -> CostModel:
    """The cost model ``cfg.kind`` names; with a calibration ``profile``, the calibrated model."""
    if cfg.kind == "constant":
        return ConstantCost(cfg)
    if profile is not None:
        return CalibratedCost(profile, gpu=gpu, weight_dtype=weight_dtype, activation_dtype=activation_dtype,
                              host_overhead_s=cfg.host_overhead_s, mode=profile_mode)
    return RooflineCost(gpu, cfg, weight_dtype=weight_dtype, activation_dtype=activation_dtype)
