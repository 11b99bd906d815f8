"""DeepEP across hosts: moesim's predictions vs DeepEP's published H800 measurements (issue 3).

    python benchmarks/deepep_multinode.py [--model flow|simple]

The aiconfigurator tables (``collectives_vs_measured.py``) are all one 8-GPU host; the only
multi-host DeepEP measurements public are the ones DeepEP's README published for its V1 kernels
(github.com/deepseek-ai/DeepEP, "Performance"; H800 with ~160 GB/s NVLink and one CX7 400 Gb/s
InfiniBand NIC per GPU). They are typed in below (``PUBLISHED``) and nothing here is fitted to
them: the kernel knobs are the H100 ones fitted on the single-host tables, the RDMA efficiency is
the unfitted default (``NcclCalibration.inter_node_efficiency`` = 0.8, DeepSeek's ~40 of 50 GB/s).

* **normal kernels** (``tests/test_internode.py``): 4,096 tokens per GPU, hidden 7,168, top-8 of
  256 experts inside the top ``min(hosts, 4)`` hosts by best expert score (scores ``|N(0,1)| + 1``),
  24 SMs, FP8 dispatch (7,168 + 224 scale bytes per token) and BF16 combine. The README gives a
  *logical* bandwidth: (token, host) pairs the GPU sends, its own host included, x token bytes,
  over the kernel time; EP8 (one host) gives NVLink bytes received over the time. The measured
  time is recovered as those bytes over the published bandwidth, with the byte counts of the same
  routing drawn here (``logical_bytes``).
* **low-latency kernels** (``tests/test_low_latency.py``): 128 tokens per GPU, hidden 7,168,
  top-8 of 256 experts (plain top-k of the same scores), FP8 dispatch, BF16 combine; the README
  gives the time per call.

Both go through ``moesim.network.deepep.DeepEP`` on the ``h800-deepseek-2048`` topology cut to
its first 32 hosts (one leaf per rail, as the first 32 hosts of the full cluster; EP n uses the
first n/8) with the token matrices of the drawn routing (``ep_tokens``).
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np

from moesim.config.topology import load_topology
from moesim.network import Topology
from moesim.network.collectives import NCCL_CALIBRATION, SimpleCollectives
from moesim.network.deepep import DEEPEP_CALIBRATION, DeepEP, EpTokens, combine_token_bytes, ep_tokens
from moesim.network.flow_collectives import FlowCollectives

HIDDEN, TOP_K, EXPERTS = 7168, 8, 256
FP8_TOKEN_BYTES = HIDDEN * (1 + 4 / 128)  # DeepEP's FP8 byte count: values + a float32 scale per 128
PUBLISHED = {  # DeepEP README (V1): normal kernels' logical bandwidth GB/s, LL kernels' time us
    "normal": {8: (153.0, 158.0), 16: (43.0, 43.0), 32: (58.0, 57.0), 64: (51.0, 50.0)},
    "low_latency": {8: (77.0, 114.0), 16: (118.0, 195.0), 32: (155.0, 273.0), 64: (173.0, 314.0),
                    128: (192.0, 369.0), 256: (194.0, 360.0)},
}


def routing(ep: int, tokens: int, topk_groups: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(topk_idx [ep * tokens, 8], src [ep * tokens])`` drawn as DeepEP's tests draw them: scores
    ``|N(0,1)| + 1`` per expert; with ``topk_groups`` the top-8 is taken inside the hosts whose best
    expert scores are the ``topk_groups`` highest (hosts = expert groups of ``EXPERTS / hosts``)."""
    hosts = ep // 8
    scores = np.abs(rng.standard_normal((ep * tokens, EXPERTS), dtype=np.float32)) + 1.0
    if topk_groups is not None:
        best = scores.reshape(-1, hosts, EXPERTS // hosts).max(axis=2)
        keep = np.argpartition(-best, topk_groups - 1, axis=1)[:, :topk_groups]
        mask = np.zeros(best.shape, bool)
        np.put_along_axis(mask, keep, True, axis=1)
        scores = scores * np.repeat(mask, EXPERTS // hosts, axis=1)
    topk = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
    return topk, np.repeat(np.arange(ep), tokens)


def logical_bytes(tok: EpTokens, ep: int, token_bytes: float) -> float:
    """Bytes DeepEP's test divides by the kernel time, mean over GPUs: (token, host) pairs sent,
    own host included, across hosts; tokens received (once per GPU) inside one host."""
    if ep == 8:
        return float(tok.pair.sum(axis=0).mean()) * token_bytes
    return float(tok.node.sum(axis=1).mean()) * token_bytes


def collectives(topo: Topology, model: str) -> Any:
    cls = FlowCollectives if model == "flow" else SimpleCollectives
    return cls(topo, **{**NCCL_CALIBRATION["h800"].kwargs(), "nvls": False})


def rows(model: str, eps: tuple[int, ...] | None = None) -> list[tuple[str, float, float, str]]:
    """``(case, measured us, predicted us, note)`` for every published figure (of the EP sizes
    ``eps``; default all)."""
    spec = load_topology("h800-deepseek-2048")
    topo = Topology.from_spec(spec.model_copy(update={"nodes": 32}))  # EP256 = 32 hosts, one leaf per rail
    coll = collectives(topo, model)
    out = []
    for ep, (bw_d, bw_c) in PUBLISHED["normal"].items():
        if eps is not None and ep not in eps:
            continue
        topk, src = routing(ep, 4096, min(ep // 8, 4), np.random.default_rng(ep))
        dep = DeepEP(coll, tuple(range(ep)), DEEPEP_CALIBRATION["h800"])
        tok = ep_tokens(topk, src, ep, EXPERTS, dep.node_of)
        kw = {"hidden": HIDDEN, "top_k": TOP_K, "n_experts": EXPERTS, "num_sms": 24}
        pred_d, pred_c = float(dep.dispatch_s(tok, **kw)), float(dep.combine_s(tok, **kw))
        link = "NVLink" if ep == 8 else "RDMA"
        for kind, bw, pred, b in (("dispatch", bw_d, pred_d, FP8_TOKEN_BYTES),
                                  ("combine", bw_c, pred_c, combine_token_bytes(HIDDEN))):
            meas = logical_bytes(tok, ep, b) / (bw * 1e9)
            out.append((f"normal {kind} EP{ep} ({bw:g} GB/s {link} logical)", meas * 1e6, pred * 1e6, ""))
    for ep, (t_d, t_c) in PUBLISHED["low_latency"].items():
        if eps is not None and ep not in eps:
            continue
        topk, src = routing(ep, 128, None, np.random.default_rng(1000 + ep))
        dep = DeepEP(coll, tuple(range(ep)), DEEPEP_CALIBRATION["h800"])
        tok = ep_tokens(topk, src, ep, EXPERTS, dep.node_of)
        kw = {"hidden": HIDDEN, "top_k": TOP_K, "n_experts": EXPERTS, "mode": "low_latency"}
        note = "README's V1 LL kernels sent even same-host tokens over RDMA; moesim uses NVLink" if ep == 8 else ""
        out.append((f"low-latency dispatch EP{ep}", t_d, float(dep.dispatch_s(tok, **kw)) * 1e6, note))
        out.append((f"low-latency combine EP{ep}", t_c, float(dep.combine_s(tok, **kw)) * 1e6, note))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["flow", "simple"], default="flow")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    table = rows(args.model)
    err = np.array([p / m - 1.0 for _, m, p, _ in table])
    multi = np.array(["EP8" not in c for c, *_ in table])
    print(f"### DeepEP across hosts vs DeepEP's published H800 figures: `python benchmarks/deepep_multinode.py "
          f"--model {args.model}`\n")
    print(f"{platform.python_version()}, {time.perf_counter() - t0:.1f} s. Error = predicted / measured - 1.\n")
    print("| case | measured us | predicted us | error % | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    for (case, m, p, note), e in zip(table, err):
        print(f"| {case} | {m:.0f} | {p:.0f} | {e * 100:+.1f} | {note} |")
    print(f"\nmedian |error|: all {np.median(np.abs(err)) * 100:.1f} %, across hosts "
          f"{np.median(np.abs(err[multi])) * 100:.1f} % ({int(multi.sum())} cases), "
          f"max {np.abs(err).max() * 100:.1f} %")


if __name__ == "__main__":
    main()
