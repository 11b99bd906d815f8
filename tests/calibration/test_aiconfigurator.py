"""Importing NVIDIA aiconfigurator's perf tables (skipped where the shared copy is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.hardware.calibrated import CalibratedCost
from moesim.hardware.profile import load_profile, write_profile

ROOT = Path(__file__).resolve().parents[3] / "shared" / "traces" / "aiconfigurator-perf-data"
pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def imported() -> tuple[dict, dict]:
    if not (ROOT / "data" / "h200_sxm").is_dir():
        pytest.skip(f"aiconfigurator tables not found at {ROOT}")
    from moesim.calibration.aiconfigurator import import_aiconfigurator
    return import_aiconfigurator(ROOT, system="h200_sxm", holdout=0.1, max_rows=4000)


def test_importer_reads_every_table_kind(imported: tuple[dict, dict], tmp_path: Path) -> None:
    data, report = imported
    assert {"gemm", "grouped_ffn", "attention", "collective", "memory"} <= set(data["samples"])
    assert data["provenance"]["source"] == "aiconfigurator" and "H200" in data["provenance"]["gpu_name"]
    prof = load_profile(write_profile(data, tmp_path / "h200.json").path)
    assert {"bf16", "fp8"} <= set(prof.fit["tables"]["eager"]["gemm"])
    assert prof.fit["roofline"]["flops_per_s"]["bf16"] == pytest.approx(989e12)
    for op in ("gemm", "grouped_ffn", "attention", "collective"):
        e = report["errors"][op]
        assert e["n"] > 0 and np.isfinite(e["median_abs_pct"]) and e["fitted_on"] > e["n"]


def test_imported_profile_answers_engine_queries(imported: tuple[dict, dict], tmp_path: Path) -> None:
    data, _ = imported
    prof = load_profile(write_profile(data, tmp_path / "h200.json").path)
    cost = CalibratedCost(prof, weight_dtype="bf16")
    # DeepSeek-V3 MLA decode on one GPU of TP8 (16 heads, bf16 latent cache): a measured variant
    kw = dict(decode=True, flops_per_pair=2.0 * 16 * (2 * 512 + 64), kv_bytes_per_token=576 * 2.0)
    t = cost.attention_s(pairs=np.array([4096.0, 65536.0]), kv_tokens=np.array([4096.0, 65536.0]), seqs=1, **kw)
    assert t[0] < t[1] and cost.out_of_domain["attention"] == 0
    # the decode table is 2-D over the measured batch x KV length: 1024 sequences of 16 tokens cost
    # far more than 16 of 1024, the same KV tokens (~0.075 vs ~0.02 ms on the H200)
    few, many = (float(cost.attention_s(pairs=16384.0, kv_tokens=16384.0, seqs=n, **kw)) for n in (16, 1024))
    assert many > 2 * few and cost.out_of_domain["attention"] == 0
    assert 1e-6 < float(cost.gemm_s(64, 4096, 4096)) < 1e-3
    assert float(cost.collective_s("all_reduce", 8, 1 << 20)) > 0
