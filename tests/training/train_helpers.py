"""Small training scenarios for the training-simulator tests (imported by the test modules)."""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.config.schema import Scenario

TINY_DENSE = {
    "name": "tiny-dense", "n_layers": 8, "hidden_size": 1024, "vocab_size": 32000, "dense_intermediate": 4096,
    "attention": {"kind": "gqa", "n_heads": 8, "n_kv_heads": 8, "head_dim": 128},
}
"""A small dense transformer whose 8 layers split evenly over 2, 4 or 8 stages."""


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (``extra`` wins)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def moe_scenario(**training: Any) -> Scenario:
    """OLMoE-1B-7B (64 experts, top-8) on one 8 x H100 host: PP2 x EP4 x DP4 by default."""
    tree = {
        "name": "t-moe", "seed": 0, "model": "olmoe-1b-7b",
        "hardware": {"gpu": "h100-sxm", "topology": "h100-8gpu-node"},
        "routing": {"kind": "zipf", "zipf_s": 1.0},
        "training": merge({"parallel": {"pp": 2, "ep": 4},
                           "data": {"seq_len": 2048, "global_batch_seqs": 32, "micro_batch_seqs": 1},
                           "steps": 3}, training),
    }
    return Scenario.model_validate(tree)


def dense_scenario(**training: Any) -> Scenario:
    """The tiny dense model on one 8 x H100 host."""
    tree = {
        "name": "t-dense", "seed": 0, "model": TINY_DENSE,
        "hardware": {"gpu": "h100-sxm", "topology": "h100-8gpu-node"},
        "training": merge({"parallel": {"pp": 2},
                           "data": {"seq_len": 2048, "global_batch_seqs": 32, "micro_batch_seqs": 1},
                           "steps": 2}, training),
    }
    return Scenario.model_validate(tree)


class FixedCollectives:
    """Test network: every all-to-all call lasts ``a2a_s`` and every all-gather / reduce-scatter
    ``gather_s`` (whatever the bytes); all-reduces and point-to-point transfers are free."""

    def __init__(self, *, a2a_s: float = 0.0, gather_s: float = 0.0) -> None:
        self.a2a_s, self.gather_s = a2a_s, gather_s

    @staticmethod
    def _zeros(nbytes: object) -> Any:
        return np.zeros(np.shape(nbytes)) if np.ndim(nbytes) else 0.0

    def all_reduce_s(self, group: tuple[int, ...], nbytes: object) -> Any:
        return self._zeros(nbytes)

    def all_gather_s(self, group: tuple[int, ...], nbytes: object) -> Any:
        return self._zeros(nbytes) + self.gather_s

    reduce_scatter_s = all_gather_s

    def all_to_all_s(self, group: tuple[int, ...], pair_bytes: object) -> Any:
        return np.full(np.shape(pair_bytes)[:-2], self.a2a_s)

    def p2p_s(self, src: int, dst: int, nbytes: object) -> Any:
        return self._zeros(nbytes)
