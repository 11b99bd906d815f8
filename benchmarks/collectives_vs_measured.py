"""moesim's collective and DeepEP predictions vs measured tables (issue 3, Benchmarks).

    python benchmarks/collectives_vs_measured.py [--data DIR] [--model flow|simple] [--all] [--csv PATH]
    python benchmarks/collectives_vs_measured.py --fit      # refit the knobs (needs scipy)

Measured: NVIDIA aiconfigurator's tables in ``../shared/traces/aiconfigurator-perf-data`` (see its
README) for H100 SXM, H200 SXM and B200 SXM, all on one 8-GPU host:

* ``nccl_perf``: nccl-tests out-of-place time of all_reduce, all_gather, reduce_scatter and
  alltoall on 2/4/8 GPUs, fp16 and int8, 256 B .. 512 MiB (``message_size`` x element size = the
  nccl-tests size: all-reduce buffer per rank, all-gather total output, reduce-scatter input per
  rank, alltoall send buffer per rank = n equal per-peer blocks);
* ``wideep_deepep_ll_perf``: DeepEP low-latency dispatch / combine time per call (FP8 dispatch,
  BF16 combine), 1..1024 tokens per GPU;
* ``wideep_deepep_normal_perf``: DeepEP normal (intranode) dispatch / combine transmit time per SM
  count (4..24), 1..131072 tokens per GPU; dispatch is the FP8 kernel (the collector keeps its
  first "Best dispatch (FP8)" line), combine BF16.

Every row is mapped to a moesim topology: one 8-GPU host (``node_topology``: the GPU preset's
NVLink per direction into one NVSwitch, one NIC per GPU — 400 Gb/s on H100/H200, 800 Gb/s on B200
as aiconfigurator's system files give — with the calibrated NVLink step latency); a row with
``node_num > 1`` would get a rail-optimised fabric of that many hosts (the shared tables have
none). Predictions come from ``FlowCollectives.calibrated`` (or ``SimpleCollectives``, identical
inside one host): all-reduce with ``algorithm="nccl"`` (ring, or NVLS for fp16 — NVLS has no int8
reductions), all-gather / reduce-scatter rings, alltoall ``direct``; DeepEP through
``moesim.network.deepep.DeepEP`` with the expected token matrices of uniform top-k routing
(what the collectors draw): normal mode ``hierarchical`` (one host: NVLink only), LL
``low_latency``.

Knobs (``NCCL_CALIBRATION``, ``DEEPEP_CALIBRATION``) were fitted on H100 and B200 with ``--fit``
on every other message size / token count ("fit" rows) and are reported on the rest
("held-out"); H200 uses H100's knobs throughout (same NVLink 4 fabric and SMs), so all its rows
are out of sample. Error = predicted / measured - 1.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.config.presets import load_gpu
from moesim.config.topology import TopologySpec
from moesim.network import Topology
from moesim.network.collectives import NCCL_CALIBRATION, NcclCalibration, Protocol, SimpleCollectives
from moesim.network.deepep import DEEPEP_CALIBRATION, DeepEP, DeepEPCalibration
from moesim.network.flow_collectives import FlowCollectives

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "traces" / "aiconfigurator-perf-data"
SYSTEMS = {  # aiconfigurator system -> (moesim GPU preset, NIC bytes/s per direction, knobs from)
    "h100_sxm": ("h100-sxm", 50e9, "h100-sxm"),
    "h200_sxm": ("h200", 50e9, "h100-sxm"),
    "b200_sxm": ("b200", 100e9, "b200"),
}
FIT_SYSTEMS = ("h100_sxm", "b200_sxm")
NCCL_OPS = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")
FAMILIES = NCCL_OPS + ("deepep_normal_dispatch", "deepep_normal_combine", "deepep_ll_dispatch", "deepep_ll_combine")


# --------------------------------------------------------------------------- measured rows
def load_measured(data: Path) -> pd.DataFrame:
    """One row per measured case: system, family, shape columns, ``measured_s``, ``split``."""
    frames = []
    for system in SYSTEMS:
        root = data / "data" / system / "comm"
        nccl = pd.read_parquet(root / "nccl" / "2.29.2" / "nccl_perf.parquet")
        elem = np.where(nccl.nccl_dtype == "half", 2, 1)
        frames.append(pd.DataFrame({
            "system": system, "family": nccl.op_name, "n_gpus": nccl.num_gpus, "node_num": 1,
            "precision": nccl.nccl_dtype.map({"half": "fp16", "int8": "int8"}), "msg_bytes": nccl.message_size * elem,
            "measured_s": nccl.latency * 1e-3,
            "fit": np.log2(nccl.message_size).round().astype(int) % 2 == 0}))
        ll = pd.read_parquet(root / "sglang" / "0.5.12" / "wideep_deepep_ll_perf.parquet")
        ll_fit = _alternate(ll.num_token)
        for kind in ("dispatch", "combine"):
            frames.append(pd.DataFrame({
                "system": system, "family": f"deepep_ll_{kind}", "n_gpus": 8, "node_num": ll.node_num,
                "hidden": ll.hidden_size, "tokens": ll.num_token, "top_k": ll.num_topk, "experts": ll.num_experts,
                "measured_s": ll[f"{kind}_avg_t_us"] * 1e-6, "fit": ll_fit}))
        nm = pd.read_parquet(root / "sglang" / "0.5.12" / "wideep_deepep_normal_perf.parquet")
        nm_fit = _alternate(nm.num_token)
        for kind in ("dispatch", "combine"):
            frames.append(pd.DataFrame({
                "system": system, "family": f"deepep_normal_{kind}", "n_gpus": 8, "node_num": nm.node_num,
                "hidden": nm.hidden_size, "tokens": nm.num_token, "top_k": nm.num_topk, "experts": nm.num_experts,
                "sms": nm[f"{kind}_sms"], "measured_s": nm[f"{kind}_transmit_us"] * 1e-6, "fit": nm_fit}))
    rows = pd.concat(frames, ignore_index=True)
    rows["split"] = np.where(rows.system.map(lambda s: SYSTEMS[s][2] != _preset(s)), "out-of-sample",
                             np.where(rows.fit, "fit", "held-out"))
    return rows.drop(columns="fit")


def _alternate(values: pd.Series) -> np.ndarray:
    """Every other distinct value (sorted) → True: the fit half."""
    order = {v: i for i, v in enumerate(sorted(values.unique()))}
    return values.map(order).to_numpy() % 2 == 0


def _preset(system: str) -> str:
    return SYSTEMS[system][0]


# --------------------------------------------------------------------------- topologies
def node_topology(system: str, nodes: int = 1, nvlink_latency_s: float | None = None) -> Topology:
    """``nodes`` hosts of 8 GPUs of ``system``: NVSwitch at the preset's NVLink rate per direction,
    one NIC per GPU on a rail-optimised fabric (none for one host); the intra-host latency is the
    calibrated NVLink step latency unless given."""
    gpu, nic, knobs = SYSTEMS[system]
    lat = NCCL_CALIBRATION[knobs].nvlink_latency_s if nvlink_latency_s is None else nvlink_latency_s
    spec = {"name": f"{system}-{nodes}x8", "gpu": gpu, "nodes": nodes, "gpus_per_node": 8,
            "intra_node": {"kind": "nvswitch", "bandwidth": load_gpu(gpu).nvlink_bytes_per_s, "latency": lat}}
    if nodes > 1:
        spec.update(nics_per_node=8, nic_bandwidth=nic, fabric={"kind": "rail_optimized", "latency": 3e-6})
    return Topology.from_spec(TopologySpec.model_validate(spec))


# --------------------------------------------------------------------------- predictions
def predict(rows: pd.DataFrame, system: str, *, model: str = "flow", nccl: NcclCalibration | None = None,
            deepep: DeepEPCalibration | None = None) -> np.ndarray:
    """Predicted seconds of ``rows`` (one system), in row order."""
    knobs = SYSTEMS[system][2]
    nccl = nccl or NCCL_CALIBRATION[knobs]
    deepep = deepep or DEEPEP_CALIBRATION[knobs]
    cls: Any = FlowCollectives if model == "flow" else SimpleCollectives
    out = np.full(len(rows), np.nan)
    pos = {i: k for k, i in enumerate(rows.index)}
    for node_num, part in rows.groupby("node_num"):
        topo = node_topology(system, int(node_num), nccl.nvlink_latency_s)
        coll = {flag: cls(topo, **{**nccl.kwargs(), "nvls": nccl.nvls and flag}) for flag in (True, False)}
        for (family, n, precision), x in part[part.family.isin(NCCL_OPS)].groupby(["family", "n_gpus", "precision"]):
            c, g, s = coll[precision == "fp16"], tuple(range(int(n))), x.msg_bytes.to_numpy(float)
            if family == "all_reduce":
                t = c.all_reduce_s(g, s, algorithm="nccl")
            elif family == "all_gather":
                t = c.all_gather_s(g, s)
            elif family == "reduce_scatter":
                t = c.reduce_scatter_s(g, s)
            else:
                t = c.all_to_all_s(g, (s / n)[:, None, None] * np.ones((int(n), int(n))))
            out[[pos[i] for i in x.index]] = t
        ep_rows = part[~part.family.isin(NCCL_OPS)]
        if len(ep_rows):
            ep = DeepEP(coll[False], tuple(range(8 * int(node_num))), deepep)
            keys = ["family", "hidden", "top_k", "experts", "sms"]
            for (family, hidden, k, e, sms), x in ep_rows.fillna({"sms": 0}).groupby(keys):
                mode = "normal" if "normal" in family else "low_latency"
                tokens = ep.expected_tokens(x.tokens.to_numpy(float)[:, None] * np.ones(len(ep.group)), int(k), int(e))
                fn = ep.dispatch_s if family.endswith("dispatch") else ep.combine_s
                kw = {"num_sms": int(sms)} if mode == "normal" else {}
                out[[pos[i] for i in x.index]] = fn(tokens, hidden=int(hidden), top_k=int(k), n_experts=int(e),
                                                    mode=mode, **kw)
    return out


def predict_all(rows: pd.DataFrame, model: str = "flow") -> pd.DataFrame:
    """``rows`` with ``predicted_s`` and ``error`` (predicted / measured - 1)."""
    pred = np.full(len(rows), np.nan)
    for system, x in rows.groupby("system"):
        pred[rows.index.get_indexer(x.index)] = predict(x, str(system), model=model)
    return rows.assign(predicted_s=pred, error=pred / rows.measured_s - 1.0)


# --------------------------------------------------------------------------- what the model lacks
def lacks(r: pd.Series) -> str:
    """The effect the model does not have that best explains a row that is off (> 15 %)."""
    if abs(r.error) <= 0.15:
        return ""
    f, err = r.family, r.error
    if f in NCCL_OPS:
        s = r.msg_bytes
        if f == "all_reduce" and r.precision == "fp16" and r.n_gpus >= 4 and s >= 8 << 20:
            return ("NVLS in-switch reduction rate (modelled at the link efficiency)" if err < 0
                    else "NCCL keeps ring for this size/rank count (NVLS not chosen)")
        if r.n_gpus == 2 and s >= 8 << 20 and err < 0:
            return "fewer NCCL channels (SMs) for 2 ranks: lower bus bandwidth than n >= 4"
        if f == "alltoall" and s <= 1 << 20:
            return "p2p launch cost per rank count / jitter of small alltoalls (neighbouring sizes differ ~2x)"
        if (1 << 20) <= s <= (64 << 20):
            return "LL128 protocol and NCCL's channel ramp-up (two protocols modelled)"
        if s < 1 << 20:
            return "small-message latency floor (launch + LL hops) varies with rank count / outlier"
        return "bus efficiency differs per collective and rank count (one per fabric modelled)"
    if f.startswith("deepep_normal"):
        if r.tokens <= 4 and err < 0:
            return "measurement outlier (the same shape at other SM counts measures the kernel floor)"
        if r.tokens <= 64:
            return "fixed kernel cost varies with the shape (launch + per-hidden-byte term modelled)"
        if err > 0:
            return "SM time per token varies with top-k and SM count (one linear SM-time model)"
        return "chunked pipeline fill / channel queue stalls of the normal kernels not modelled"
    if r.experts <= 16:
        return "warp-level send limit with few experts (approximated by one rate per warp)"
    return "LL kernel launch / per-expert signalling overhead varies with the shape"


# --------------------------------------------------------------------------- reports
def _case(r: pd.Series) -> str:
    if r.family in NCCL_OPS:
        return f"{r.system} {r.family} n={r.n_gpus} {r.precision} {_size(r.msg_bytes)}"
    tail = f" sms={int(r.sms)}" if r.family.startswith("deepep_normal") else ""
    return (f"{r.system} {r.family} h={int(r.hidden)} k={int(r.top_k)} E={int(r.experts)} T={int(r.tokens)}{tail}")


def _size(b: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            return f"{b / scale:g} {unit}"
    return f"{b:g} B"


def selected(rows: pd.DataFrame) -> pd.DataFrame:
    """Representative rows: fp16 NCCL at 2 / 8 GPUs and 4 KiB, 1 MiB, 64 MiB, 256 MiB; DeepSeek-V3's
    dispatch / combine shape (hidden 7168, top-8, 256 experts) at a few token counts."""
    nccl = rows.family.isin(NCCL_OPS) & (rows.precision == "fp16") & rows.n_gpus.isin([2, 8]) & rows.msg_bytes.isin(
        [4 << 10, 1 << 20, 64 << 20, 256 << 20])
    ds = (rows.hidden == 7168) & (rows.top_k == 8) & (rows.experts == 256)
    ll = ds & rows.family.str.startswith("deepep_ll") & rows.tokens.isin([1, 128, 1024])
    normal = ds & rows.family.str.startswith("deepep_normal") & (rows.sms == 24) & rows.tokens.isin(
        [16, 512, 8192, 131072])
    return rows[nccl | ll | normal]


def markdown(rows: pd.DataFrame) -> str:
    lines = ["| case | measured (us) | predicted (us) | error % | split | model lacks |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    for _, r in rows.iterrows():
        lines.append(f"| {_case(r)} | {r.measured_s * 1e6:.1f} | {r.predicted_s * 1e6:.1f} | {100 * r.error:+.1f} "
                     f"| {r.split} | {lacks(r)} |")
    return "\n".join(lines)


def summary(rows: pd.DataFrame) -> str:
    """Median / p90 |error| per family and system, per split, and overall."""
    a = rows.assign(abs_err=rows.error.abs())
    lines = ["| family | " + " | ".join(SYSTEMS) + " | all | rows |", "| --- |" + " ---: |" * (len(SYSTEMS) + 2)]
    for fam in FAMILIES:
        x = a[a.family == fam]
        cells = [f"{100 * x[x.system == s].abs_err.median():.1f}" for s in SYSTEMS]
        lines.append(f"| {fam} | " + " | ".join(cells) + f" | {100 * x.abs_err.median():.1f} | {len(x)} |")
    cells = [f"{100 * a[a.system == s].abs_err.median():.1f}" for s in SYSTEMS]
    lines.append("| **all** | " + " | ".join(cells) + f" | **{100 * a.abs_err.median():.1f}** | {len(a)} |")
    lines += ["", "| split | median abs error % | p90 abs error % | rows |", "| --- | ---: | ---: | ---: |"]
    for split in ("fit", "held-out", "out-of-sample"):
        x = a[a.split == split]
        lines.append(f"| {split} | {100 * x.abs_err.median():.1f} | {100 * x.abs_err.quantile(0.9):.1f} | {len(x)} |")
    nccl, ep = a[a.family.isin(NCCL_OPS)], a[~a.family.isin(NCCL_OPS)]
    lines += ["", f"NCCL median {100 * nccl.abs_err.median():.1f} % ({len(nccl)} rows), DeepEP median "
              f"{100 * ep.abs_err.median():.1f} % ({len(ep)} rows); rows off by > 15 %: "
              f"{int((a.abs_err > 0.15).sum())} of {len(a)}."]
    return "\n".join(lines)


def worst_by_effect(rows: pd.DataFrame) -> str:
    off = rows[rows.error.abs() > 0.15]
    if off.empty:
        return ""
    lines = ["| effect the model lacks | rows > 15 % | median error % of those |", "| --- | ---: | ---: |"]
    for why, x in off.groupby(off.apply(lacks, axis=1)):
        lines.append(f"| {why} | {len(x)} | {100 * x.error.median():+.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- fit
def fit(rows: pd.DataFrame) -> None:
    """Refit the knobs on the "fit" rows of H100 and B200 (simple model; identical in one host)
    and print them as Python to paste into ``NCCL_CALIBRATION`` / ``DEEPEP_CALIBRATION``."""
    from scipy.optimize import least_squares  # noqa: PLC0415 (optional dev dependency)

    for system in FIT_SYSTEMS:
        gpu = _preset(system)
        x = rows[(rows.system == system) & (rows.split == "fit")]
        base_n, base_d = NCCL_CALIBRATION[gpu], DEEPEP_CALIBRATION[gpu]
        nc = x[x.family.isin(NCCL_OPS)]

        def nccl_of(q: np.ndarray) -> NcclCalibration:
            eff, hop, ll_l, ll_f, ll_a, s_l, s_a = q
            return replace(base_n, efficiency=eff, nvlink_latency_s=hop * 1e-6, protocols=(
                Protocol("LL", launch_s=ll_l * 1e-6, a2a_launch_s=ll_a * 1e-6, bw_fraction=ll_f,
                         p2p_max_bytes=base_n.protocols[0].p2p_max_bytes),
                Protocol("Simple", launch_s=s_l * 1e-6, a2a_launch_s=s_a * 1e-6, bw_fraction=1.0)))

        def res_n(q: np.ndarray) -> np.ndarray:
            return np.log(predict(nc, system, model="simple", nccl=nccl_of(q)) / nc.measured_s.to_numpy())
        r = least_squares(res_n, [0.7, 0.8, 5, 0.3, 7, 20, 13], bounds=([0.2, 0.05, 0, 0.02, 0, 0, 0],
                                                                        [1, 5, 100, 1, 100, 100, 100]),
                          loss="soft_l1", f_scale=0.05)
        cal_n = nccl_of(r.x)
        print(f"{gpu} NCCL: {np.round(r.x, 3).tolist()}  (eff, hop us, LL launch us, LL frac, LL a2a us, "
              f"Simple launch us, Simple a2a us); fit median {100 * np.median(np.abs(np.expm1(r.fun))):.1f} %")
        for fams, names, q0, lo, hi in (
                (("deepep_normal_dispatch", "deepep_normal_combine"),
                 ("normal_dispatch_launch_s", "normal_combine_launch_s", "normal_combine_s_per_hidden_byte",
                  "normal_dispatch_sm_bytes_per_s", "normal_combine_sm_bytes_per_s",
                  "normal_dispatch_sm_s_per_message", "normal_combine_sm_s_per_message",
                  "normal_dispatch_sm_s_per_token", "normal_combine_sm_s_per_token"),
                 [26, 26, 1.4, 20, 20, 50, 50, 300, 300], [0, 0, 0, 1, 1, 0, 0, 0, 0],
                 [200, 200, 20, 200, 200, 2000, 2000, 5000, 5000]),
                (("deepep_ll_dispatch", "deepep_ll_combine"),
                 ("ll_dispatch_launch_s", "ll_combine_launch_s", "ll_dispatch_s_per_expert", "ll_combine_s_per_expert",
                  "ll_bw_fraction", "ll_warp_bytes_per_s"), [9, 10, 15, 5, 0.8, 2.3], [0, 0, 0, 0, 0.1, 0.1],
                 [100, 100, 200, 200, 1, 50])):
            ep = x[x.family.isin(fams)]
            scale = {"normal_dispatch_sm_s_per_token": 1e-9, "normal_combine_sm_s_per_token": 1e-9,
                     "normal_dispatch_sm_s_per_message": 1e-9, "normal_combine_sm_s_per_message": 1e-9,
                     "normal_dispatch_sm_bytes_per_s": 1e9, "normal_combine_sm_bytes_per_s": 1e9,
                     "ll_warp_bytes_per_s": 1e9, "ll_bw_fraction": 1.0,
                     "normal_combine_s_per_hidden_byte": 1e-9, "ll_dispatch_s_per_expert": 1e-9,
                     "ll_combine_s_per_expert": 1e-9}

            def dep_of(q: np.ndarray) -> DeepEPCalibration:
                return replace(base_d, **{k: v * scale.get(k, 1e-6) for k, v in zip(names, q)})

            def res_d(q: np.ndarray) -> np.ndarray:
                pred = predict(ep, system, model="simple", nccl=cal_n, deepep=dep_of(q))
                return np.log(pred / ep.measured_s.to_numpy())
            r = least_squares(res_d, q0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05)
            print(f"{gpu} DeepEP: " + ", ".join(f"{k}={v:.4g}" for k, v in zip(names, r.x))
                  + f"  (us, ns, GB/s); fit median {100 * np.median(np.abs(np.expm1(r.fun))):.1f} %")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="aiconfigurator-perf-data folder")
    ap.add_argument("--model", choices=("flow", "simple"), default="flow")
    ap.add_argument("--all", action="store_true", help="print every row, not the selected cases")
    ap.add_argument("--csv", type=Path, help="write every row with its prediction to this CSV")
    ap.add_argument("--fit", action="store_true", help="refit the knobs (scipy) and print them")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no measured tables at {args.data}", file=sys.stderr)
        return 1
    rows = load_measured(args.data)
    if args.fit:
        fit(rows)
        return 0
    t0 = time.perf_counter()
    rows = predict_all(rows, args.model)
    wall = time.perf_counter() - t0
    print(f"# moesim ({args.model} model) vs aiconfigurator measured collectives\n")
    print(f"{len(rows)} rows predicted in {wall:.1f} s on {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, numpy {np.__version__}.\n")
    print(markdown(rows if args.all else selected(rows)))
    print("\n## Median absolute error (%)\n")
    print(summary(rows))
    print("\n## Rows off by more than 15 %, by the effect the model lacks\n")
    print(worst_by_effect(rows))
    if args.csv:
        rows.assign(case=rows.apply(_case, axis=1), lacks=rows.apply(lacks, axis=1)).to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
