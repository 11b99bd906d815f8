"""MoETuner seed (issue 4): end-to-end gain of the two-stage ILP placement over contiguous placement.

MoETuner (POLICIES.md A2) reports 9.3 % single-node (8 x H100, 4EP x 2TP) and 17.5 % two-node
(16 x H200, 4EP x 4TP) end-to-end speedup for Mixtral-8x7B with cross-layer-correlated routing.
Here the same deployments run in the engine (``moesim.engine.run.run``) from
``scenarios/moetuner-mixtral-{1node,2node}.yaml``: correlated routing (rho 0.9), Zipf popularity
shuffled per layer, placement planned once from the routing model's expected loads and transitions.

Measurements, all at equal load and seed for every placement:

- *throughput gain*: 256 requests (512 prompt + 128 output tokens) arriving at once; makespan of
  contiguous / makespan of the placement - 1;
- *latency*: Poisson arrivals at 70 % of contiguous's batch request throughput for 15 s; change
  of the mean end-to-end latency;
- *busiest rank*: mean over passes and layers of the busiest EP rank's share of (token, slot) pairs;
- *MoETuner a2a model*: sum over layer transitions of the slowest GPU pair's cross-layer bytes
  / bandwidth when tokens travel from their layer-l expert to their layer-(l+1) experts (the
  quantity ILP stage 2 minimises), per 8,192-token pass, relative to contiguous.

Variants (table 2): ILP as configured (stage 1 + stage 2); ILP with stage 2 given no transitions
(``transitions=None``: cyclic cluster->GPU map); ILP with MoETuner's uneven cluster sizes (3 slots
per rank via ``redundant_experts: 4`` but no replicas: the ILP's replica budget forced to 0); ILP
with 4 replicas of hot experts (``redundant_experts: 4``, beyond MoETuner); ILP at rho = 0.
The variants reach the ILP through two benchmark-only wrappers around
``moesim.engine.moe_setup`` (a placement cache and the two overrides); the engine is unchanged.

    python benchmarks/moetuner_seed.py            # both tables (about 5 min on one core)
    python benchmarks/moetuner_seed.py --quick    # Zipf 1.3 only, fewer variants
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import moesim.engine.moe_setup as moe_setup
from moesim.config.load import load_scenario
from moesim.core.rng import RngStreams
from moesim.engine.build import build_deployment
from moesim.engine.run import run
from moesim.policies.placement import Placement
from moesim.workload import build_routing

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # label: (scenario file, paper's end-to-end gain)
    "1 node, 8xH100, 4EPx2TP": (ROOT / "scenarios" / "moetuner-mixtral-1node.yaml", 0.093),
    "2 nodes, 16xH200, 4EPx4TP": (ROOT / "scenarios" / "moetuner-mixtral-2node.yaml", 0.175),
}
BATCH = ["workload.kind=poisson", "workload.rate_per_s=1000000", "workload.duration_s=0.000256",
         "workload.prompt_tokens={kind: fixed, mean: 512}", "workload.output_tokens={kind: fixed, mean: 128}"]
ONLINE_S, ONLINE_LOAD = 15.0, 0.7
TRAFFIC_TOKENS = 8192

# variant: (overrides, hook) — hook "nostage2" drops the transitions, "noreplicas" forces the ILP's
# replica budget to 0 (so redundant slots only let clusters differ in size)
VARIANTS: dict[str, tuple[list[str], str | None]] = {
    "contiguous": (["placement.kind=contiguous"], None),
    "ILP": (["placement.kind=ilp"], None),
    "ILP stage 1 only": (["placement.kind=ilp"], "nostage2"),
    "ILP uneven clusters": (["placement.kind=ilp", "placement.redundant_experts=4"], "noreplicas"),
    "ILP + 4 replicas": (["placement.kind=ilp", "placement.redundant_experts=4"], None),
}

_cache: dict[Any, Placement] = {}
_hook: str | None = None
_orig_plan = moe_setup.plan_placement
_orig_kwargs = moe_setup._placement_kwargs


def _plan(scenario, d, gpus, load, *, transitions=None):  # noqa: ANN001, ANN202
    key = (_hook, scenario.placement.model_dump_json(), scenario.deployment.model_dump_json(),
           scenario.hardware.topology, scenario.routing.model_dump_json(), scenario.seed, gpus,
           np.asarray(load).tobytes())
    if key not in _cache:
        _cache[key] = _orig_plan(scenario, d, gpus, load,
                                 transitions=None if _hook == "nostage2" else transitions)
    return _cache[key]


def _kwargs(scenario, n_nodes):  # noqa: ANN001, ANN202
    kw = _orig_kwargs(scenario, n_nodes)
    if _hook == "noreplicas" and scenario.placement.kind == "ilp":
        kw["replicas"] = 0
    return kw


@contextlib.contextmanager
def hooked(hook: str | None) -> Iterator[None]:
    """Route the engine's placement planning through the cache (and the variant's override)."""
    global _hook
    _hook = hook
    moe_setup.plan_placement, moe_setup._placement_kwargs = _plan, _kwargs
    try:
        yield
    finally:
        moe_setup.plan_placement, moe_setup._placement_kwargs = _orig_plan, _orig_kwargs
        _hook = None


def run_variant(path: Path, variant: str, extra: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    """(summary, final phy2log of replica 0) of one engine run."""
    overrides, hook = VARIANTS[variant]
    with hooked(hook):
        res = run(load_scenario(path, overrides + extra))
    return res.summary, res.placements[0]


def a2a_model_s(path: Path, extra: list[str], phy2log: np.ndarray) -> float:
    """MoETuner's all-to-all model: sum over layer transitions of max over EP-rank pairs of
    cross-layer bytes / bandwidth, tokens going from their layer-l expert's rank to their
    layer-(l+1) experts' ranks (even split over replicas), for one pass of TRAFFIC_TOKENS tokens."""
    sc = load_scenario(path, extra)
    d = build_deployment(sc)
    m = d.model
    assert m.moe is not None
    routing = build_routing(sc.routing, n_layers=m.n_moe_layers, n_experts=m.moe.n_routed_experts,
                            top_k=m.moe.top_k, rng=RngStreams(sc.seed).get("routing"))
    counts = routing.expected_counts(TRAFFIC_TOKENS)
    trans = routing.transitions
    ranks = np.asarray(d.replica_gpus[0][::sc.deployment.expert_tp])
    bw = d.topology.bottleneck_bytes_per_s[np.ix_(ranks, ranks)]
    pl = Placement.from_phy2log(phy2log, n_experts=m.moe.n_routed_experts, n_gpus=sc.deployment.ep)
    share = np.zeros((pl.n_layers, pl.n_experts, pl.n_gpus))
    layer, slot = np.nonzero(pl.phy2log >= 0)
    np.add.at(share, (layer, pl.phy2log[layer, slot], slot // pl.slots_per_gpu), 1.0)
    share /= pl.logcnt[:, :, None]
    bytes_per_slot = m.hidden_size * d.shape.act_bytes_per_elem
    total = 0.0
    for l in range(pl.n_layers - 1):
        pair = share[l].T @ (counts[l][:, None] * trans[l]) @ share[l + 1] * bytes_per_slot
        np.fill_diagonal(pair, 0.0)
        np.fill_diagonal(bw, np.inf)
        total += float((pair / bw).max())
    return total


def busiest_share(summary: dict[str, Any], ep: int) -> float:
    return float(summary["expert_imbalance_mean"]) / ep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="Zipf 1.3 only; ILP and contiguous only")
    args = ap.parse_args()
    skews = [1.3] if args.quick else [1.0, 1.3]
    variants = ["contiguous", "ILP"] if args.quick else list(VARIANTS)
    t_start = time.perf_counter()
    head: list[str] = []
    abl: list[str] = []
    for label, (path, paper) in SETTINGS.items():
        ep = load_scenario(path).deployment.ep
        for s in skews:
            cases = [(f"rho 0.9", [f"routing.zipf_s={s}"])]
            if not args.quick and s == 1.3:
                cases.append(("rho 0", [f"routing.zipf_s={s}", "routing.layer_correlation=0.0"]))
            for rho_label, extra in cases:
                batch = {v: run_variant(path, v, extra + BATCH) for v in (variants if rho_label == "rho 0.9"
                                                                         else ["contiguous", "ILP"])}
                base = batch["contiguous"][0]
                gain = {v: base["sim_time_s"] / sm["sim_time_s"] - 1.0 for v, (sm, _) in batch.items()}
                a2a = {v: a2a_model_s(path, extra, p2l) for v, (_, p2l) in batch.items()}
                if rho_label == "rho 0.9":
                    rate = ONLINE_LOAD * base["requests_finished"] / base["sim_time_s"]
                    online = [f"workload.rate_per_s={rate:.3f}", f"workload.duration_s={ONLINE_S}"]
                    lat = {v: run_variant(path, v, extra + online)[0]["e2e_mean_s"] for v in ("contiguous", "ILP")}
                    head.append(
                        f"| {label} | {s:g} | {busiest_share(base, ep):.1%} / {busiest_share(batch['ILP'][0], ep):.1%} | "
                        f"{base['moe_comm_fraction']:.1%} | **{gain['ILP']:+.1%}** | "
                        f"{lat['ILP'] / lat['contiguous'] - 1:+.1%} ({lat['contiguous']:.2f} -> {lat['ILP']:.2f} s "
                        f"at {rate:.0f} req/s) | {paper:+.1%} |")
                cells = " | ".join(f"{gain[v]:+.1%}" if v in gain else "-" for v in VARIANTS if v != "contiguous")
                traffic = " | ".join(f"{a2a[v] / a2a['contiguous']:.2f}" if v in a2a else "-"
                                     for v in ("ILP", "ILP stage 1 only"))
                abl.append(f"| {label} | {s:g} | {rho_label} | {cells} | {a2a['contiguous'] * 1e3:.3f} | {traffic} |")
    print("Engine, end to end (equal load, same seed for every placement); gains over contiguous\n")
    print("| setting | Zipf s | busiest EP rank's token share: contiguous / ILP | MoE all-to-all share of busy time "
          "(contiguous) | throughput gain (batch of 256) | mean e2e latency (Poisson, 70 % load) | paper |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(head))
    print("\nVariants: throughput gain over contiguous (batch of 256); MoETuner's a2a model (slowest GPU pair of "
          "cross-layer traffic, summed over layers) relative to contiguous\n")
    names = [v for v in VARIANTS if v != "contiguous"]
    print(f"| setting | Zipf s | routing | {' | '.join(names)} | a2a model, contiguous ms | a2a model ILP | "
          "a2a model ILP stage 1 only |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- |")
    print("\n".join(abl))
    print(f"\n({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
