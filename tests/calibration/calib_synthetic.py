"""Synthetic calibration data for the tests: profiles whose tables are a known latency surface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from moesim.calibration.fit import fit_profile
from moesim.calibration.reference import attention_variants, resolve_model
from moesim.config.presets import load_gpu
from moesim.config.schema import CostCfg
from moesim.hardware.cost import RooflineCost
from moesim.hardware.profile import PROVENANCE_KEYS, write_profile

POW2 = [2 ** e for e in range(15)]


def provenance(**extra: Any) -> dict[str, Any]:
    """A complete provenance block for synthetic profiles."""
    return {**dict.fromkeys(PROVENANCE_KEYS), "device": "synthetic", "gpu_name": "synthetic", **extra}


def row(t: float, **keys: Any) -> dict[str, Any]:
    return {**keys, "median_s": float(t), "spread": 0.02, "reps": 5}


def roofline_samples(*, scale: float = 1.0, model: str = "olmoe-1b-7b", tp: int = 4, ep: int = 4,
                     ) -> dict[str, list[dict[str, Any]]]:
    """Raw samples that reproduce ``RooflineCost`` (x ``scale``) for ``model`` at TP ``tp`` / EP ``ep``."""
    rc = RooflineCost(load_gpu("h100-sxm"), CostCfg())
    spec = resolve_model(model)
    s: dict[str, list[dict[str, Any]]] = {"gemm": [], "grouped_ffn": [], "attention": [], "memory": []}
    for k in (512, 1024, 2048, 4096, 8192):
        for n in (64, 256, 1024, 4096, 16384, 65536):
            for m in POW2:
                s["gemm"].append(row(scale * float(rc.gemm_s(m, k, n)), dtype="bf16", m=m, k=k, n=n))
    h, i = spec.hidden_size, spec.moe.expert_intermediate
    for a in (1, 2, 4, 8, 16, 32, 64):
        for n in POW2[:14]:
            t = float(rc.grouped_ffn_s(np.full(a, n, float), h, i))
            s["grouped_ffn"].append(row(scale * t, dtype="bf16", hidden=h, intermediate=i, active=a,
                                        tokens_per_expert=n, skew="uniform", impl="synthetic"))
    for v in attention_variants(spec, tp=tp):
        fpp, kvb = v["flops_per_pair"], v["kv_bytes_per_token"]
        if v["phase"] == "prefill":
            pts = [(b * sq * (sq + 1) / 2, b * sq, b) for sq in POW2[:13] for b in (1, 2, 4, 8, 16, 32, 64)]
        else:       # batch x KV tokens per sequence, as measured
            pts = [(float(b * kv), float(b * kv), b) for b in POW2[:10] for kv in [2 ** e for e in range(18)]
                   if b * kv <= 1 << 23]
        for pairs, kv, b in pts:
            t = float(rc.attention_s(decode=v["phase"] == "decode", pairs=pairs, kv_tokens=kv, flops_per_pair=fpp,
                                     kv_bytes_per_token=kvb, seqs=b))
            s["attention"].append(row(scale * t, phase=v["phase"], flops_per_pair=fpp, kv_bytes_per_token=kvb,
                                      pairs=pairs, kv_tokens=kv, batch=b))
    for e in range(6, 35):
        s["memory"].append(row(scale * float(rc.memory_s(2.0 ** e)), kind="d2d", nbytes=2.0 ** e))
    s["host"] = [row(scale * rc.kernel_s, kind="launch")]
    return s


def write_synthetic(path: Path, samples: dict[str, list[dict[str, Any]]], **prov: Any) -> Path:
    write_profile(fit_profile(samples, provenance=provenance(**prov), settings={}), path)
    return path


