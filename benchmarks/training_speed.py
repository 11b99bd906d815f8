"""Training speed benchmark (issue 6): DeepSeek-V3 on 2,048 H800, PP16 x EP64 x DP128, ZeRO-1, DualPipe.

Targets (one core): one simulated step <= 1 s wall (setup included), 1,000 steps with routing
dynamics (loss-free bias, drifting router, dispersed micro-batches) <= 60 s.

    taskset -c 0 python benchmarks/training_speed.py [--steps 1000] [--profile]

Prints wall and CPU seconds of setup, the first step and the whole run, DES events, and the mean
step-time breakdown as a markdown table (paste into benchmarks/RESULTS.md).

What is simulated per step (see moesim/engine/training/setup.py): one pipeline bundle (the 64
data-parallel ranks that share an EP group on each of the 16 stages) as 16 SimPy processes with
one event per stage op: the DualPipe order of 120 micro-batches (60 from each end) is 5,760 ops
(forward, backward-for-input and backward-for-weights per micro-batch and stage) in 2,418 slots
(an F&B chunk, a full backward's B and W, or one op); routing
draws for one EP group (262,144 tokens x top-8 over 256 experts, ``samples_per_step`` draws over
58 layers) through the loss-free-bias gate; MoE costs on each stage's EP group; DP gradient sync
over the real 128-rank groups; memory of every stage.
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
SCENARIO = REPO / "scenarios" / "deepseek-v3-train-2048xh800.yaml"
PARTS = ("compute", "recompute", "tp_comm", "ep_comm", "gate", "bubble", "pp_comm", "imbalance_wait",
         "straggler_wait", "dp_exposed", "optimizer", "param_gather")


def _timed(steps: int, prof: cProfile.Profile | None = None):  # noqa: ANN202
    scenario = load_scenario(SCENARIO, [f"training.steps={steps}", f"training.detail_step={steps - 1}"])
    w, c = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    result = run(scenario)
    if prof:
        prof.disable()
    return result, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--profile", action="store_true", help="print the top functions by cumulative time")
    args = ap.parse_args()
    one, one_wall, one_cpu = _timed(1)
    prof = cProfile.Profile() if args.profile else None
    many, wall, cpu = _timed(args.steps, prof)
    s = many.summary
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(f"scenario: {s['scenario']} -- {s['parallelism']}, {s['schedule']}, {s['micro_batches']} micro-batches")
    print(f"1 step (setup included): wall {one_wall:.2f} s, cpu {one_cpu:.2f} s")
    print(f"{args.steps} steps: wall {wall:.1f} s, cpu {cpu:.1f} s ({cpu / args.steps * 1e3:.1f} ms cpu/step), "
          f"DES events {s['des_events']:,}, peak RSS {rss:,.0f} MiB")
    print()
    print(f"| component | mean s / step | share |\n| --- | --- | --- |")
    mean = s["step_time_mean_s"]
    for k in PARTS:
        v = s[f"step_{k}_s"]
        print(f"| {k} | {v:.3f} | {v / mean:.1%} |")
    print(f"| **step** | **{mean:.3f}** | MFU {s['mfu']:.1%}, {s['tokens_per_s']:,.0f} tok/s |")
    print(f"| (all-to-all hidden in F&B chunks, not part of the step) | {s['step_ep_comm_hidden_s']:.3f} | |")
    print()
    print(f"routing: MaxVio global first {s['maxvio_global_first']:.3f} last {s['maxvio_global_last']:.3f}, "
          f"EP rank max/mean {s['expert_imbalance_mean']:.3f}; memory peak {s['memory_peak_bytes'] / 2**30:.1f} GiB")
    print(f"14.8T tokens: {s['time_to_train_days']:.1f} days, {s['gpu_hours'] / 1e6:.2f} M GPU-hours, goodput "
          f"{s['goodput']:.3f} ({s['failures']} failures)")
    del one
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
