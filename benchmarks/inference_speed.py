"""Inference speed benchmark: 1 h of the Azure 2023 conversation trace (19,366 requests) served by
8 replicas of Mixtral-8x7B, each on 2 H100 (attention TP2, experts EP2 over the same GPUs).

Target (issue 2): <= 10 s wall on one core. Run pinned to one core:

    taskset -c 0 python benchmarks/inference_speed.py [--trace PATH] [--no-fast-forward] [--profile]
        [--network flow|simple] [--prefill-replicas P]

Prints wall seconds, simulated seconds per wall second, forward passes, DES events per second
and peak RSS. The trace is read from ../shared/traces unless --trace is given.
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import resource
import time
from pathlib import Path

import numpy as np

from moesim.config.load import load_scenario
from moesim.engine.run import run

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared" / "traces" / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_conv.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--no-fast-forward", action="store_true", help="step every decode pass (slow reference)")
    ap.add_argument("--profile", action="store_true", help="print the top functions by cumulative time")
    ap.add_argument("--network", choices=["flow", "simple"], default="flow", help="network model (default flow)")
    ap.add_argument("--prefill-replicas", type=int, default=0,
                    help="disaggregate: this many of the 8 replicas only prefill (KV handoff to the others)")
    args = ap.parse_args()
    sets = [f"workload.path={args.trace}", f"hardware.network.model={args.network}",
            f"deployment.prefill_replicas={args.prefill_replicas}"]
    if args.no_fast_forward:
        sets.append("engine.fast_forward=false")
    scenario = load_scenario(REPO / "scenarios" / "mixtral-azure.yaml", sets)
    prof = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    result = run(scenario)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    s = result.summary
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}, fast_forward={not args.no_fast_forward}, network={args.network}")
    print(f"requests {s['requests_arrived']:,}  finished {s['requests_finished']:,}  "
          f"simulated {s['sim_time_s']:,.1f} s")
    if args.prefill_replicas:
        print(f"disaggregated: {args.prefill_replicas} prefill replicas, KV transfers {s['kv_transfers']:,}, "
              f"p50 {s['kv_transfer_p50_s'] * 1e3:.3f} ms, p99 {s['kv_transfer_p99_s'] * 1e3:.3f} ms, "
              f"TTFT p50 {s['ttft_p50_s'] * 1e3:.1f} ms, TPOT p50 {s['tpot_p50_s'] * 1e3:.2f} ms, "
              f"max-min solves {s.get('flow_rate_solves', 0):,}")
    print(f"wall {wall:.2f} s | sim s per wall s {s['sim_time_s'] / wall:,.0f} | forward passes "
          f"{s['forward_passes']:,} ({s['forward_passes'] / wall:,.0f}/s) | DES events {s['des_events']:,} "
          f"({s['des_events'] / wall:,.0f}/s) | peak RSS {rss_mib:,.0f} MiB")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
