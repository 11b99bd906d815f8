"""Import NVIDIA aiconfigurator's measured performance tables into a moesim profile.

aiconfigurator (github.com/ai-dynamo/aiconfigurator, Apache-2.0) ships per-system Parquet tables
under ``data/<system>/<op>/<framework>/<version>/`` and spec defaults in ``systems/<system>.yaml``;
latency columns are milliseconds. What maps onto which moesim op:

``gemm/*/gemm_perf.parquet`` -> ``gemm``
    one row per (dtype, m, n, k); dtypes ``bfloat16`` -> ``bf16``, ``fp8``, ``fp8_block``.
``moe/trtllm/*/moe_perf.parquet`` -> ``grouped_ffn``
    the fused MoE layer time of ``num_tokens`` tokens with top-``topk`` routing over
    ``num_experts`` experts split ``moe_ep_size`` x ``moe_tp_size``. Only ``balanced`` routing
    and gated kernels are used, and only ``moe_ep_size = 1`` (see ``_moe_rows``). The GPU sees
    ``pairs = num_tokens * topk`` (token, slot) pairs on ``E`` experts of intermediate
    ``inter / tp``; with balanced routing that is ``active = min(E, pairs)`` experts of
    ``pairs / active`` tokens each. The fused time includes routing and permutation, which
    moesim's pass model otherwise leaves out.
``mla/trtllm/*/{context,generation}_mla_perf.parquet`` -> ``attention``
    DeepSeek-V3 MLA per GPU with ``num_heads`` local heads: context (prefill, ``batch_size``
    prompts of ``isl`` tokens) and generation (decode, KV length ``isl + step``), per-pair FLOPs
    and latent KV bytes as ``moesim.spec`` computes them.
``comm/nccl/*/nccl_perf.parquet`` -> ``collective``
    nccl-tests time per op and GPU count; fp16 rows, bytes = elements x 2.
``systems/<system>.yaml`` -> ``memory`` and the roofline
    not measurements: a ``d2d`` table of ``latency + bytes / (mem_bw x scaling)`` from the tool's
    own empirical constants (marked ``derived`` in each row), and the peak FLOP/s.

The module tables (``mla_*_module_perf``, projections included), the SGLang tables and DeepEP
dispatch/combine tables are not imported.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from moesim.calibration.fit import fit_profile, holdout_errors
from moesim.config.presets import read_yaml
from moesim.core.errors import ConfigError, MissingExtra

__all__ = ["MLA_DIMS", "import_aiconfigurator", "read_tables"]

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "fp8": "fp8", "fp8_block": "fp8_block", "w4a16_mxfp4": "w4a16_mxfp4"}
MLA_DIMS = {"qk_head_dim": 192, "v_head_dim": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64}
"""DeepSeek-V3's MLA dimensions (the only MLA shape aiconfigurator's MLA tables measure)."""
_OPS = {"all_gather": "all_gather", "all_reduce": "all_reduce", "reduce_scatter": "reduce_scatter",
        "alltoall": "alltoall"}


def _pd() -> Any:
    import pandas as pd
    try:
        import pyarrow  # noqa: F401 - pandas' Parquet engine
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtra("reading aiconfigurator tables needs pyarrow: pip install pyarrow") from e
    return pd


def _latest(folder: Path, name: str) -> Path | None:
    """The newest ``<framework>/<version>/<name>`` below ``folder`` (version order by string)."""
    hits = sorted(folder.glob(f"*/*/{name}"), key=lambda p: (p.parent.parent.name, p.parent.name))
    return hits[-1] if hits else None


def _read(pd: Any, path: Path | None, max_rows: int | None, seed: int) -> Any:
    if path is None:
        return None
    df = pd.read_parquet(path)
    if max_rows is not None and len(df) > max_rows:
        df = df.sample(n=max_rows, random_state=seed).sort_index()
    return df


def _row(median_s: float, **keys: Any) -> dict[str, Any]:
    return {**keys, "median_s": float(median_s), "spread": 0.0, "reps": 1}


def _gemm_rows(df: Any) -> list[dict[str, Any]]:
    out = []
    for dt, m, n, k, lat in zip(df["gemm_dtype"], df["m"], df["n"], df["k"], df["latency"]):
        if lat > 0 and dt in _DTYPES:
            out.append(_row(lat / 1e3, dtype=_DTYPES[dt], m=int(m), k=int(k), n=int(n)))
    return out


def _moe_rows(df: Any) -> list[dict[str, Any]]:
    # EP > 1 rows are EP simulated on one GPU, and their latency does not follow the local load
    # (E=128, ep=16, top-1: ~1.9 ms flat from 8 to 4096 tokens, where E=16, ep=2 with the same
    # 8 local experts and tokens per expert takes ~0.26 ms): only ep = 1 rows are imported.
    df = df[(df["distribution"] == "balanced") & ~df["kernel_source"].str.contains("nongated")
            & (df["moe_ep_size"] == 1)]
    out = []
    for r in df.itertuples(index=False):
        local = r.num_experts // r.moe_ep_size
        pairs = r.num_tokens * r.topk / r.moe_ep_size
        if pairs < 1 or r.latency <= 0 or r.moe_dtype not in _DTYPES:
            continue
        active = int(min(local, round(pairs)))
        out.append(_row(r.latency / 1e3, dtype=_DTYPES[r.moe_dtype], hidden=int(r.hidden_size),
                        intermediate=int(r.inter_size // r.moe_tp_size), active=active,
                        tokens_per_expert=pairs / active, experts=int(local), skew="uniform",
                        impl=str(r.kernel_source),
                        num_tokens=int(r.num_tokens), topk=int(r.topk), num_experts=int(r.num_experts),
                        ep=int(r.moe_ep_size), tp=int(r.moe_tp_size)))
    return out


def _mla_rows(ctx: Any, gen: Any) -> list[dict[str, Any]]:
    d = MLA_DIMS
    out = []
    for phase, df in (("prefill", ctx), ("decode", gen)):
        if df is None:
            continue
        for r in df.itertuples(index=False):
            if r.latency <= 0:
                continue
            kvb = (d["kv_lora_rank"] + d["qk_rope_head_dim"]) * (1.0 if r.kv_cache_dtype == "fp8" else 2.0)
            if phase == "prefill":
                fpp = 2.0 * r.num_heads * (d["qk_head_dim"] + d["v_head_dim"])
                kv = r.batch_size * r.isl
                pairs = r.batch_size * r.isl * (r.isl + 1) / 2
            else:
                fpp = 2.0 * r.num_heads * (2 * d["kv_lora_rank"] + d["qk_rope_head_dim"])
                kv = pairs = r.batch_size * (r.isl + r.step)
            out.append(_row(r.latency / 1e3, phase=phase, flops_per_pair=fpp, kv_bytes_per_token=kvb,
                            pairs=float(pairs), kv_tokens=float(kv), batch=int(r.batch_size),
                            variant=f"mla-{phase}-h{r.num_heads}-kv{r.kv_cache_dtype}"))
    return out


def _nccl_rows(df: Any) -> list[dict[str, Any]]:
    df = df[df["nccl_dtype"] == "half"]
    return [_row(lat / 1e3, op=_OPS[op], gpus=int(g), nbytes=float(size) * 2.0)
            for op, g, size, lat in zip(df["op_name"], df["num_gpus"], df["message_size"], df["latency"])
            if op in _OPS and lat > 0]


def _system(root: Path, system: str) -> dict[str, Any]:
    path = root / "systems" / f"{system}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found; systems present: "
                          f"{sorted(p.stem for p in (root / 'systems').glob('*.yaml'))}", field="--system")
    return read_yaml(path, field="--system")


def _memory_rows(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    gpu = spec.get("gpu", {})
    bw = float(gpu["mem_bw"]) * float(gpu.get("mem_bw_empirical_scaling_factor", 1.0))
    lat = float(gpu.get("mem_empirical_constant_latency", 3e-6))
    rows = [_row(lat + nb / bw, kind="d2d", nbytes=float(nb), derived=True) for nb in (2.0 ** np.arange(12, 33, 2))]
    flops = {"bf16": float(gpu["bfloat16_tc_flops"])}
    if "fp8_tc_flops" in gpu:
        flops["fp8"] = flops["fp8_block"] = float(gpu["fp8_tc_flops"])
    return rows, {"flops_per_s": flops, "bytes_per_s": bw, "launch_s": lat}


def read_tables(root: str | Path, *, system: str = "h200_sxm", max_rows: int | None = None,
                seed: int = 0) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
    """(samples by op, roofline from the system spec, what was read) from an aiconfigurator tree.

    ``max_rows`` subsamples each table (for quick tests); None reads everything.
    """
    pd = _pd()
    root = Path(root)
    data = root / "data" / system
    if not data.is_dir():
        have = sorted(p.name for p in (root / "data").glob("*")) if (root / "data").is_dir() else []
        raise ConfigError(f"{data} not found; systems with data: {have}", field="--system")
    spec = _system(root, system)
    files = {
        "gemm": _latest(data / "gemm", "gemm_perf.parquet"),
        "moe": max((data / "moe" / "trtllm").glob("*/moe_perf.parquet"), default=None, key=lambda p: p.parent.name),
        "mla_context": _latest(data / "mla", "context_mla_perf.parquet"),
        "mla_generation": _latest(data / "mla", "generation_mla_perf.parquet"),
        "nccl": _latest(data / "comm", "nccl_perf.parquet"),
    }
    read = {k: _read(pd, p, max_rows, seed) for k, p in files.items()}
    samples: dict[str, list[dict[str, Any]]] = {}
    if read["gemm"] is not None:
        samples["gemm"] = _gemm_rows(read["gemm"])
    if read["moe"] is not None:
        samples["grouped_ffn"] = _moe_rows(read["moe"])
    if read["mla_context"] is not None or read["mla_generation"] is not None:
        samples["attention"] = _mla_rows(read["mla_context"], read["mla_generation"])
    if read["nccl"] is not None:
        samples["collective"] = _nccl_rows(read["nccl"])
    mem, roof = _memory_rows(spec)
    samples["memory"] = mem
    info = {"files": {k: (str(p.relative_to(root)) if p else None) for k, p in files.items()},
            "rows_read": {k: (0 if v is None else int(len(v))) for k, v in read.items()}}
    return {k: v for k, v in samples.items() if v}, roof, info


def import_aiconfigurator(root: str | Path, *, system: str = "h200_sxm", holdout: float = 0.1, seed: int = 0,
                          max_rows: int | None = None, command: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """(unsealed profile dict fitted on all rows, held-back fit-error report).

    The report fits on all but a random ``holdout`` fraction of each table's rows and scores the
    model on the rows held back, through the same CostModel calls the engine makes.
    """
    root = Path(root)
    samples, roof, info = read_tables(root, system=system, max_rows=max_rows, seed=seed)
    report = {"system": system, "holdout_fraction": holdout, "seed": seed, **info,
              "errors": holdout_errors(samples, fraction=holdout, seed=seed, roofline=roof,
                                       ops=("gemm", "grouped_ffn", "attention", "collective"))}
    meta = root / "README.md"
    prov = {
        "gpu_name": spec_name(system), "sm_count": None, "clocks": None, "driver": None, "cuda": None, "torch": None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or f"moesim calibrate --from-aiconfigurator {root} --system {system}",
        "device": "cuda", "source": "aiconfigurator", "aiconfigurator_root": str(root),
        "aiconfigurator_readme": meta.read_text(encoding="utf-8").splitlines()[0] if meta.is_file() else None,
        "files": info["files"], "memory_table": "derived from systems yaml (mem_bw x scaling + latency), not measured",
    }
    data = fit_profile(samples, provenance=prov, settings={"holdout_report": report}, roofline=roof)
    return data, report


def spec_name(system: str) -> str:
    """``h200_sxm`` -> ``NVIDIA H200 SXM``."""
    head, _, tail = system.partition("_")
    return f"NVIDIA {head.upper()} {tail.upper()}".strip()
