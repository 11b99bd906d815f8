"""LLEP seed (issue 4): one MoE layer on 8 x H200, plain EP vs LLEP, under growing routing skew.

Reproduces the setting of the LLEP paper (POLICIES.md B1): DeepSeek-V3 layer shape (E=256,
d=7168, f=2048, k=8, 16K tokens per GPU) and gpt-oss-120b shape (E=128, d=2880, f=2880, k=4,
32K tokens per GPU); imbalance "r of tokens into h experts" with the authors' generator (a hot
token sends all its k slots to the hot experts in rotation, so one expert can take r*T*k slots);
LLEP with lambda=1.3, alpha=1, m=1024. Layer time and memory come from the engine's own MoE
layer cost (moesim.engine.moe_layer), the roofline H200 cost model and the 8-GPU NVSwitch node.

    python benchmarks/llep_seed.py            # prints a markdown table
"""

from __future__ import annotations

import numpy as np

from moesim.config.presets import load_gpu
from moesim.config.schema import CostCfg
from moesim.config.topology import load_topology
from moesim.engine.moe_layer import MoeShape, gemm_tokens_from_decision, moe_layers_cost, transfer_bytes
from moesim.hardware.cost import RooflineCost
from moesim.network import SimpleCollectives, Topology
from moesim.policies.balance import BALANCERS
from moesim.policies.placement import PLACEMENTS

P = 8
SHAPES = {  # name: (experts, hidden, intermediate, top_k, tokens per GPU)
    "DeepSeek-V3": (256, 7168, 2048, 8, 16384),
    "gpt-oss-120b": (128, 2880, 2880, 4, 32768),
}
SKEWS = [(0.0, 0), (0.3, 16), (0.5, 16), (0.5, 4), (0.8, 4), (0.8, 1), (0.95, 4), (0.95, 1)]


def authors_counts(tokens: int, experts: int, top_k: int, r: float, h: int) -> np.ndarray:
    """``int64[E]`` (token, slot) pairs per expert from the LLEP authors' "r:h" generator."""
    counts = np.zeros(experts, np.int64)
    n_hot = int(round(r * tokens)) if h else 0
    if h:
        hot_slots = n_hot * top_k
        counts[:h] = hot_slots // h
        counts[: hot_slots % h] += 1
    cold = np.arange(h, experts)
    cold_slots = (tokens - n_hot) * top_k
    counts[cold] += cold_slots // cold.size
    counts[cold[: cold_slots % cold.size]] += 1
    return counts


def layer(counts: np.ndarray, balancer: str, shape: MoeShape, cost: RooflineCost, coll: SimpleCollectives,
          expert_bytes: float) -> tuple[float, float, float]:
    """(layer seconds, peak GPU memory bytes, expert weight bytes moved) of one layer."""
    experts = counts.size
    placement = PLACEMENTS.build("contiguous").place(np.ones((1, experts)), n_gpus=P, slots_per_gpu=experts // P)
    kwargs = {"alpha": 1.0, "min_tokens": 1024, "threshold": 1.3} if balancer == "llep" else {}
    decision = BALANCERS.build(balancer, **kwargs).balance(counts[None, :], placement)
    gemm = gemm_tokens_from_decision(decision, experts)
    pairs = transfer_bytes(decision, shape)
    c = moe_layers_cost(gemm[None], shape, cost, coll, weight_pairs=pairs[None])
    native_weights = experts / P * expert_bytes
    return float(c.time_s[0]), float(native_weights + c.peak_act_bytes[0].max()), float(pairs.sum())


def main() -> None:
    topo = Topology.from_spec(load_topology("h200-8gpu-node"))
    coll = SimpleCollectives(topo, efficiency=0.8)
    cost = RooflineCost(load_gpu("h200"), CostCfg())
    print("| layer | skew (r into h) | EP ms | LLEP ms | LLEP/EP speedup | EP peak GB | LLEP peak GB | weights moved GB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (experts, d, f, k, per_gpu) in SHAPES.items():
        expert_bytes = 3 * d * f * 2.0
        shape = MoeShape(hidden=d, intermediate_per_gpu=f, act_bytes=2.0, expert_bytes_per_gpu=expert_bytes,
                         expert_tp=1, gpus=tuple(range(P)))
        for r, h in SKEWS:
            counts = authors_counts(per_gpu * P, experts, k, r, h)
            ep = layer(counts, "none", shape, cost, coll, expert_bytes)
            ll = layer(counts, "llep", shape, cost, coll, expert_bytes)
            skew = "balanced" if h == 0 else f"{r:.0%} into {h}"
            print(f"| {name} | {skew} | {ep[0] * 1e3:.2f} | {ll[0] * 1e3:.2f} | {ep[0] / ll[0]:.2f}x | "
                  f"{ep[1] / 1e9:.1f} | {ll[1] / 1e9:.1f} | {ll[2] / 1e9:.2f} |")


if __name__ == "__main__":
    main()
