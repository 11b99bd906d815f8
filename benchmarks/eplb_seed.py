"""EPLB seed (issue 4): GPU imbalance vs redundant experts under routing drift, with and without staleness.

POLICIES.md A1 expects the GPU imbalance ratio (max / mean GPU load) to approach 1 as the
redundant experts R - E grow, and the gain to shrink when loads drift faster than re-planning.

**Policy level** (the table): a DeepSeek-V3-like layer set, 58 MoE layers x E=256 experts, top-8,
8,192 tokens per pass (decode at EP=32/64), on EP=32 and EP=64. Routing comes from moesim's own
``drift`` generator (``routing.kind=drift``): mean popularity Zipf(0.25) shuffled per layer (expert
max/mean about 3, as in the real DeepSeek-V2-Lite routing in ../shared/traces, 1.9-3.4 per
layer), log-popularity an OU process with sigma 0.8 (what ``fit`` gives on that trace: 0.6-1.0).
Every pass is drawn, EPLB (global policy: decode at large EP, as the EPLB README recommends)
places the experts, and ``Placement``'s even split over replicas gives each GPU's load; the ratio is
averaged over layers and passes. Re-planning mirrors ``moesim.engine.replan.Replanner``: every
``I`` passes the window's per-layer load shares are folded into an EMA (decay 0.5) and EPLB plans
from it; the plan goes into force at once (*fresh*) or ``D`` passes later (*stale*).
Conditions:

- *no drift*: sigma 0, one plan from the expected loads (``placement.plan_from: expected``);
- *slow / medium / fast drift*: tau = 100 / 10 / 1 re-plan intervals;
- *static plan*: planned once at t=0 from the then-current expected loads, never re-planned.

**Engine** (``--engine``): one end-to-end ``moesim.engine.run.run`` experiment, DeepSeek-V3 (fp8)
on 32 H100 (4-node rail), one replica, attention TP8 x DP4, EP32, ``routing.kind=drift``, EPLB
re-planned every ``replan_interval_s`` = 2 s with and without ``replan_delay_s``, under a decode
workload (Poisson) and a prefill-heavy one (a queue of long prompts keeps every pass at the
8,192-token budget). Migration pauses (weights copied at each re-plan) count in TPOT and
throughput but not in the mean pass time.

    python benchmarks/eplb_seed.py             # policy-level table (~2 min on one core; ~5 min on a busy box)
    python benchmarks/eplb_seed.py --engine    # + the engine table (~1.5-2 min more)
    python benchmarks/eplb_seed.py --quick     # 8 layers, fewer passes (seconds)
"""

from __future__ import annotations

import os

# one BLAS thread: the arrays are small, and on a shared box threaded BLAS slowed runs ~10x
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from moesim.config.schema import RoutingLoadCfg
from moesim.policies.placement import PLACEMENTS, Placement
from moesim.workload import build_routing

E, K = 256, 8
TOKENS = 8192
ZIPF_S, SIGMA = 0.25, 0.8
INTERVAL, DELAY, EMA_DECAY = 50, 50, 0.5          # passes
TAU = {"slow": 100 * INTERVAL, "medium": 10 * INTERVAL, "fast": INTERVAL}  # passes


# ---------------------------------------------------------------------- building blocks
def draw_passes(*, n_layers: int, n_experts: int, top_k: int, tokens: int, passes: int, tau: float,
                sigma: float, zipf_s: float = ZIPF_S, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(counts int32[N, L, E], expected float[L, E] at t=0)`` from the engine's ``drift`` generator."""
    cfg = RoutingLoadCfg(kind="drift", zipf_s=zipf_s, drift_tau_passes=tau, drift_sigma=sigma)
    routing = build_routing(cfg, n_layers=n_layers, n_experts=n_experts, top_k=top_k,
                            rng=np.random.default_rng(seed))
    expected = routing.expected_counts(tokens)
    counts = np.empty((passes, n_layers, n_experts), np.int32)
    for i in range(passes):
        counts[i] = routing.next_pass(tokens)
    return counts, expected


def eplb_planner(n_gpus: int, redundant: int, n_experts: int) -> Callable[[np.ndarray], Placement]:
    """Load ``[L, E]`` -> EPLB placement (global policy) with ``redundant`` extra slots per layer."""
    policy = PLACEMENTS.build("eplb", n_groups=1, n_nodes=1)
    slots = (n_experts + redundant) // n_gpus
    return lambda load: policy.place(load, n_gpus=n_gpus, slots_per_gpu=slots)


def contiguous_planner(n_gpus: int, n_experts: int) -> Callable[[np.ndarray], Placement]:
    policy = PLACEMENTS.build("contiguous")
    return lambda load: policy.place(load, n_gpus=n_gpus, slots_per_gpu=n_experts // n_gpus)


def gpu_share(placement: Placement) -> np.ndarray:
    """``float[L, E, P]``: share of expert e's tokens that GPU g computes (even split over replicas)."""
    n_layers, n_slots = placement.phy2log.shape
    w = np.zeros((n_layers, placement.n_experts, placement.n_gpus))
    layer, slot = np.nonzero(placement.phy2log >= 0)
    np.add.at(w, (layer, placement.phy2log[layer, slot], slot // placement.slots_per_gpu), 1.0)
    return w / placement.logcnt[:, :, None]


def mean_imbalance(counts: np.ndarray, schedule: list[tuple[int, Placement]]) -> float:
    """Mean over passes and layers of max / mean GPU load; ``schedule``: (first pass, placement)."""
    total, n = 0.0, counts.shape[0]
    bounds = [s for s, _ in schedule] + [n]
    for (start, placement), end in zip(schedule, bounds[1:]):
        if end <= start:
            continue
        gl = np.einsum("nle,leg->nlg", counts[start:end].astype(np.float64), gpu_share(placement))
        mean = gl.mean(axis=2)
        total += float(np.where(mean > 0, gl.max(axis=2) / np.maximum(mean, 1e-12), 1.0).sum() / gl.shape[1])
    return total / n


def replans(counts: np.ndarray, planner: Callable[[np.ndarray], Placement], *, interval: int,
            ema_decay: float = EMA_DECAY) -> list[tuple[int, Placement]]:
    """``[(pass it was planned at, plan)]``: every ``interval`` passes, EMA of the window's shares
    (the engine's ``Replanner._plan``)."""
    out, ema = [], None
    for at in range(interval, counts.shape[0], interval):
        window = counts[at - interval:at].sum(axis=0, dtype=np.float64)
        share = window / np.maximum(window.sum(axis=1, keepdims=True), 1.0)
        ema = share if ema is None else ema_decay * ema + (1 - ema_decay) * share
        out.append((at, planner(ema)))
    return out


def in_force(initial: Placement, plans: list[tuple[int, Placement]], delay: int) -> list[tuple[int, Placement]]:
    """Schedule of placements when each plan takes effect ``delay`` passes after it was made."""
    return [(0, initial)] + [(at + delay, p) for at, p in plans]


# ---------------------------------------------------------------------- the experiment
@dataclass
class Row:
    ep: int
    redundant: int | None          # None: contiguous, no EPLB
    values: dict[str, float]


def policy_table(*, n_layers: int, passes: int, seed: int = 0) -> tuple[list[Row], dict[str, float]]:
    cols = ["no drift", "slow: fresh", "slow: stale", "medium: fresh", "medium: stale", "fast: static plan",
            "fast: fresh", "fast: stale"]
    data = {"none": draw_passes(n_layers=n_layers, n_experts=E, top_k=K, tokens=TOKENS, passes=passes,
                                tau=TAU["slow"], sigma=0.0, seed=seed)}
    for speed, tau in TAU.items():
        data[speed] = draw_passes(n_layers=n_layers, n_experts=E, top_k=K, tokens=TOKENS, passes=passes,
                                  tau=tau, sigma=SIGMA, seed=seed)
    timing = {"passes": passes, "layers": n_layers}
    rows: list[Row] = []
    for ep in (32, 64):
        configs: list[tuple[int | None, Callable[[np.ndarray], Placement]]] = [(None, contiguous_planner(ep, E))]
        configs += [(r, eplb_planner(ep, r, E)) for r in (0, E // 8, E // 4, E // 2, E) if (E + r) % ep == 0]
        for red, planner in configs:
            v: dict[str, float] = {}
            counts, expected = data["none"]
            v["no drift"] = mean_imbalance(counts, [(0, planner(expected))])
            for speed in TAU:
                counts, expected = data[speed]
                initial = planner(expected)
                plans = replans(counts, planner, interval=INTERVAL)
                if speed == "fast":
                    v["fast: static plan"] = mean_imbalance(counts, [(0, initial)])
                v[f"{speed}: fresh"] = mean_imbalance(counts, in_force(initial, plans, 0))
                v[f"{speed}: stale"] = mean_imbalance(counts, in_force(initial, plans, DELAY))
            rows.append(Row(ep, red, {c: v[c] for c in cols}))
    return rows, timing


def print_policy_table(rows: list[Row]) -> None:
    cols = list(rows[0].values)
    print(f"| EP | redundant R-E | extra expert HBM | {' | '.join(cols)} |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |")
    for r in rows:
        red = "contiguous (no EPLB)" if r.redundant is None else str(r.redundant)
        hbm = "-" if r.redundant is None else f"+{r.redundant / E:.1%}"
        print(f"| {r.ep} | {red} | {hbm} | " + " | ".join(f"{r.values[c]:.3f}" for c in cols) + " |")


# ---------------------------------------------------------------------- engine run
WORKLOADS = {  # label: (workload section, engine horizon s)
    "decode: Poisson 40 req/s, 256 in / 256 out": (
        {"kind": "poisson", "rate_per_s": 40, "prompt_tokens": {"kind": "fixed", "mean": 256},
         "output_tokens": {"kind": "fixed", "mean": 256}}, None),
    "prefill-heavy: 2,000 x (2,048 in / 32 out) at t=0, first 20 s": (
        {"kind": "poisson", "rate_per_s": 1e5, "duration_s": 0.02, "prompt_tokens": {"kind": "fixed", "mean": 2048},
         "output_tokens": {"kind": "fixed", "mean": 32}}, 20.0),
}


def engine_scenario(*, kind: str, redundant: int, interval_s: float | None, delay_s: float,
                    tau_passes: float, duration_s: float, workload: str | None = None, network: str | None = None,
                    seed: int = 0):  # noqa: ANN201
    from moesim.config.schema import Scenario
    placement: dict[str, object] = {"kind": kind, "redundant_experts": redundant, "ema_decay": EMA_DECAY,
                                    "replan_delay_s": delay_s}
    if interval_s is not None:
        placement["replan_interval_s"] = interval_s
    wl, horizon = WORKLOADS[workload or next(iter(WORKLOADS))]
    hardware: dict[str, object] = {"gpu": "h100-sxm", "topology": "h100-4node-rail"}
    if network is not None:
        hardware["network"] = {"model": network}
    return Scenario.model_validate({
        "name": "eplb-seed", "seed": seed, "model": "deepseek-v3",
        "hardware": hardware,
        "deployment": {"replicas": 1, "gpus_per_replica": 32, "attention_tp": 8, "attention_dp": 4,
                       "ep": 32, "expert_tp": 1, "weight_dtype": "fp8"},
        "scheduler": {"max_num_seqs": 512, "max_batched_tokens": 8192},
        "workload": {"duration_s": duration_s, **wl},
        # every pass draws afresh under drift, so one pooled sample per shape loses nothing and
        # avoids costing 16 identical copies of each draw (same results, several times faster)
        "routing": {"kind": "drift", "zipf_s": ZIPF_S, "drift_sigma": SIGMA, "drift_tau_passes": tau_passes,
                    "samples_per_shape": 1},
        "placement": placement,
        "engine": {"horizon_s": horizon},
    })


ENGINE_CASES = [  # label, kind, redundant, re-plan interval (s), delay (s)
    ("contiguous, static", "contiguous", 0, None, 0.0),
    ("EPLB R-E=0, fresh", "eplb", 0, 2.0, 0.0),
    ("EPLB R-E=32, static plan", "eplb", 32, None, 0.0),
    ("EPLB R-E=32, fresh", "eplb", 32, 2.0, 0.0),
    # delay < interval: a delay >= interval loses every plan (engine bug, see the report)
    ("EPLB R-E=32, stale (delay 1.8 s)", "eplb", 32, 2.0, 1.8),
    ("EPLB R-E=64, fresh", "eplb", 64, 2.0, 0.0),
]


def engine_table(duration_s: float, network: str | None = None) -> None:
    from moesim.engine.run import run
    tau = 80.0
    net = f"network model {network}" if network else "default network model"
    print(f"\nEngine: DeepSeek-V3 fp8, 32 x H100 (h100-4node-rail, {net}), attention TP8 x DP4, EP32, "
          f"drift tau {tau:g} "
          f"passes sigma {SIGMA}, EPLB global, re-plan every 2 s from an EMA ({EMA_DECAY}) of observed loads\n")
    print("| workload | placement | GPU imbalance (per pass) | mean pass ms | TPOT mean ms | input tok/s | "
          "output tok/s | "
          "re-plans | migration pause s | weights moved TB | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for workload in WORKLOADS:
        for label, kind, red, iv, delay in ENGINE_CASES:
            t0 = time.perf_counter()
            res = run(engine_scenario(kind=kind, redundant=red, interval_s=iv, delay_s=delay, tau_passes=tau,
                                      duration_s=duration_s, workload=workload, network=network))
            s = res.summary
            pass_ms = s["busy_fraction_mean"] * s["sim_time_s"] / max(s["forward_passes"], 1) * 1e3
            print(f"| {workload.split(':')[0]} | {label} | {s['expert_imbalance_mean']:.3f} | {pass_ms:.1f} | "
                  f"{s['tpot_mean_s'] * 1e3:.1f} | {s['input_tokens_per_s']:.0f} | {s['output_tokens_per_s']:.0f} | "
                  f"{s['replans']} | {s['migration_pause_s']:.2f} | {s['expert_weight_bytes_moved'] / 1e12:.2f} | "
                  f"{time.perf_counter() - t0:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 layers, 600 passes")
    ap.add_argument("--engine", action="store_true", help="also run the end-to-end engine experiment")
    ap.add_argument("--engine-only", action="store_true")
    ap.add_argument("--duration", type=float, default=10.0, help="engine: seconds of arrivals")
    ap.add_argument("--network", choices=["simple", "flow"], default=None,
                    help="engine: hardware.network.model (default: the schema's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.engine_only:
        n_layers, passes = (8, 600) if args.quick else (58, 1200)
        t0 = time.perf_counter()
        rows, _ = policy_table(n_layers=n_layers, passes=passes, seed=args.seed)
        print(f"Policy level: {n_layers} layers x E={E}, top-{K}, {TOKENS} tokens/pass, {passes} passes; "
              f"Zipf({ZIPF_S}) popularity, drift sigma {SIGMA}; tau slow / medium / fast "
              f"{TAU['slow']} / {TAU['medium']} / {TAU['fast']} passes; re-plan every {INTERVAL} passes "
              f"(EMA {EMA_DECAY}), stale = in force {DELAY} passes late. "
              f"Cells: mean GPU max/mean load ({time.perf_counter() - t0:.0f} s)\n")
        print_policy_table(rows)
    if args.engine or args.engine_only:
        engine_table(args.duration, args.network)


if __name__ == "__main__":
    main()
