"""Network scale benchmark (issue 3): flow-level all-to-all at 1,024 and 16,384 GPUs.

    python benchmarks/network_scale.py [--repeats 5] [--skip-16k]

Fabric: ``generators.fat_tree`` (8 H100 per host, NVLink 450 GB/s and one 400 Gb/s NIC per GPU per
direction, radix-64 switches, 1:1, rail-aligned, PXN): two tiers (32 leaves, 32 spines) at 1,024
GPUs, three tiers (512 leaves, 16 pods, 1,024 core switches) at 16,384. Every number is wall time
of the whole call: routing every flow, building the incidence, the max-min solves and the
completion event loop (``FlowNetwork`` defaults: ``window_frac = 1e-2``, ``rtol = 1e-3``).

* (a) one all-to-all over 1,024 GPUs: every ordered GPU pair is a flow (1,047,552 flows), each
  with its own NVLink / NIC / trunk path. ``hot``: rank 0 receives 4x the mean of the others (the
  issue's skew; flows into the same destination finish together, 3 re-solves); ``lognormal``:
  per-destination load lognormal(σ = 0.5) × per-pair U(0.8, 1.2), i.e. expert-load skew, whose
  spread of completion times costs one re-solve per coalescing window (``window_frac``; the
  makespan error of 1e-2 and 3e-2 is measured in ``batch``'s docstring: ≤ 0.6 % and ≤ 1.1 %).
* (b) 16,384 GPUs: all 268M pairs (or the 33.5M rail-aligned host-pair flows) do not fit a 5 s
  budget in numpy, so what is solved is what a 16k-GPU MoE job runs: 256 expert-parallel groups of
  64 GPUs doing their all-to-all *at the same time* on the shared fabric, every group spread over
  all 16 pods (group k = GPUs k, k + 256, k + 512, ...), so the traffic crosses the core:
  1,032,192 GPU-level flows solved jointly, skewed (one hot rank per group receiving 4x).
* (b2) 16,384 GPUs, all 268M pairs, costed as the engine costs a pass's all-to-all: the congestion
  bound on the real paths (``LinkLoadCollectives.all_to_all_s``: busiest link's bytes / capacity +
  path and message latency), its link bytes summed from the pair matrix by
  ``fat_tree_loads.all_to_all_link_bytes`` (no per-pair routes). Hot rank 4x and lognormal loads,
  as in (a); the timed call includes copying the 2 GB matrix. (a) gives how far the max-min
  makespan lies above this bound on the same fabric family.
* (c) building the 16,384-GPU topology: ``fat_tree(16384)`` with its networkx graph, and the
  ``FlowNetwork`` on it.

Timings: the first run in the process (numpy's large allocations still cold) and the median of
``--repeats`` more, each on a fresh ``FlowNetwork`` (no routes or results cached); wall seconds and,
in brackets, this process's CPU seconds (single-threaded, so CPU ≈ wall on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from moesim.network.flows import FlowNetwork
from moesim.network.generators import fat_tree
from moesim.network.link_load import LinkLoadCollectives


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[str, str, Any]:
    """(first run, median of the next ``repeats``) as "wall s (CPU s)" strings, and the last result.

    CPU time (this process) is shown because a shared machine inflates wall time."""
    def once() -> tuple[float, float, Any]:
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - w0, time.process_time() - c0, out

    wall, cpu, out = once()
    first = f"{wall:.3f} ({cpu:.3f})"
    runs = [once() for _ in range(repeats)]
    if runs:
        out = runs[-1][2]
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    return first, f"{wall:.3f} ({cpu:.3f})", out


def _hot(n: int, rng: np.random.Generator) -> np.ndarray:
    pb = np.full((n, n), 1e6) * rng.uniform(0.999, 1.001, (n, n))
    pb[:, 0] *= 4.0
    return pb


def _lognormal(n: int, rng: np.random.Generator) -> np.ndarray:
    return 1e6 * rng.lognormal(0.0, 0.5, n)[None, :] * rng.uniform(0.8, 1.2, (n, n))


def bench_1k(repeats: int) -> list[str]:
    """(a): all-to-all over 1,024 GPUs, all pairs, fresh FlowNetwork each time."""
    rows, n = [], 1024
    tree = fat_tree(n, build_graph=False)
    cases = (("hot rank 4x", _hot, 1e-2), ("lognormal loads", _lognormal, 1e-2),
             ("lognormal loads, window_frac 3e-2", _lognormal, 3e-2))
    for name, make, frac in cases:
        pb = make(n, np.random.default_rng(0))

        def run(pb: np.ndarray = pb, frac: float = frac) -> tuple[float, Any]:
            prof, scale = FlowNetwork(tree, window_frac=frac).transfer(pb, tuple(range(n)))
            return prof.time_s(scale), prof

        first, med, (t_s, prof) = _timed(run, repeats)
        rows.append(f"| (a) 1,024 GPUs, all pairs, {name} | {prof.n_flows:,} | {prof.n_events} | "
                    f"{t_s * 1e3:.3f} ms ({t_s / (prof.lower_bound_s * pb.max() / 2**20):.3f}× LB) | "
                    f"{first} | {med} | ≤ 0.5 |")
    return rows


def bench_16k(repeats: int) -> list[str]:
    """(b): 256 concurrent skewed EP-64 all-to-alls over 16,384 GPUs, jointly."""
    n, ep = 16384, 64
    n_groups = n // ep
    tree = fat_tree(n, build_graph=False)
    members = np.arange(n_groups)[:, None] + n_groups * np.arange(ep)[None, :]  # [group, rank]
    rng = np.random.default_rng(0)
    pb = 1e6 * rng.uniform(0.999, 1.001, (n_groups, ep, ep))
    pb[:, :, 0] *= 4.0  # rank 0 of every group is hot
    idx = np.arange(ep)
    off = idx[:, None] != idx[None, :]
    src = np.broadcast_to(members[:, :, None], pb.shape)[:, off]
    dst = np.broadcast_to(members[:, None, :], pb.shape)[:, off]
    nbytes = pb[:, off]

    def run() -> Any:
        return FlowNetwork(tree).transfer_flows(src.ravel(), dst.ravel(), nbytes.ravel())

    first, med, prof = _timed(run, repeats)
    t_s = prof.time_s()
    return [f"| (b) 16,384 GPUs, 256 concurrent EP-64 all-to-alls (hot rank 4x each) | {prof.n_flows:,} | "
            f"{prof.n_events} | {t_s * 1e3:.3f} ms ({t_s / prof.lower_bound_s:.3f}× LB) | "
            f"{first} | {med} | ≤ 5 |"]


def bench_16k_all_pairs(repeats: int) -> list[str]:
    """(b2): one all-to-all over all 16,384 GPUs, congestion bound, every pair."""
    n = 16384
    coll = LinkLoadCollectives(fat_tree(n, build_graph=False), efficiency=1.0, per_message_latency_s=0.0,
                               account=False)
    group = tuple(range(n))
    rows = []
    for name, make in (("hot rank 4x", _hot), ("lognormal loads", _lognormal)):
        pb = make(n, np.random.default_rng(0))
        first, med, t_s = _timed(lambda pb=pb: coll.all_to_all_s(group, pb), repeats)
        del pb
        rows.append(f"| (b2) 16,384 GPUs, all pairs, {name}, congestion bound | {n * (n - 1):,} | 0 | "
                    f"{t_s * 1e3:.3f} ms (bound) | {first} | {med} | ≤ 5 |")
    return rows


def bench_build(repeats: int) -> list[str]:
    """(c): the 16,384-GPU topology, with and without its graph, and the FlowNetwork on it."""
    rows = []
    for graph in (True, False):
        first, med, tree = _timed(lambda g=graph: fat_tree(16384, build_graph=g), repeats)
        edges = f"{tree.graph.number_of_edges():,} edges" if graph else "no graph"
        rows.append(f"| (c) build fat_tree(16384) ({edges}) | | | | {first} | {med} | ≤ 5 |")
    first, med, net = _timed(lambda: FlowNetwork(tree), repeats)
    rows.append(f"| (c) FlowNetwork(fat_tree(16384)) ({net.n_links:,} router links) | | | | "
                f"{first} | {med} | |")
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} CPUs ({cpu}), python {platform.python_version()}, numpy {np.__version__}, "
            f"load average {load:.2f} at start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs after the first (median)")
    ap.add_argument("--skip-16k", action="store_true", help="only (a)")
    args = ap.parse_args()
    rows = bench_1k(args.repeats)
    if not args.skip_16k:
        rows += bench_16k(args.repeats) + bench_16k_all_pairs(args.repeats) + bench_build(args.repeats)
    print("### Network scale (issue 3): `python benchmarks/network_scale.py`\n")
    print(f"Machine: {machine()}. Fat-tree: 8 GPUs/host, 400 Gb/s NIC per GPU, radix 64, 1:1, PXN.\n")
    print("| case | flows | re-solves | simulated time | first run, wall (CPU) s | median, wall (CPU) s "
          "| target s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
