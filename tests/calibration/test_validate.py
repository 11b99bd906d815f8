"""`moesim validate` end to end on CPU with the tiny model, and the reference model itself."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moesim.calibration.reference import TINY, Case, ReferenceModel, attention_variants, resolve_model  # noqa: E402
from moesim.cli import main  # noqa: E402
from moesim.core.errors import ConfigError  # noqa: E402


def test_validate_writes_table_and_report(cpu_profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "val"
    assert main(["validate", "--profile", str(cpu_profile), "--quick", "--device", "cpu", "-o", str(out)]) == 0
    with (out / "validate.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["phase"] for r in rows} == {"prefill", "decode"}
    for r in rows:
        assert float(r["measured_ms"]) > 0 and float(r["predicted_ms"]) > 0
        assert np.isfinite(float(r["error_pct"]))
    html = (out / "validate.html").read_text()
    assert "<svg" in html and "<script" not in html and "median |error|" in html
    assert "| model | phase |" in (out / "validate.md").read_text()
    assert "median |error|" in capsys.readouterr().out


def test_prediction_comes_from_the_engine_pass_model(cpu_profile: Path) -> None:
    from moesim.calibration import load_profile
    from moesim.cli.calibrate import predict_cases
    prof = load_profile(cpu_profile)
    cases = [Case("decode", 2, 32), Case("decode", 2, 64), Case("prefill", 1, 32)]
    pred = predict_cases(str(cpu_profile), prof, TINY, cases, "eager")
    p = [r["predicted_s"] for r in pred]
    assert p[0] < p[1] and all(x > 0 for x in p)
    # eager: every kernel the reference launches is priced from the eager tables (launch included),
    # nothing is added per pass (no framework in the loop); the pass model counts those kernels
    from moesim.calibration.reference import kernels_per_pass
    for case, r in zip(cases, pred):
        assert r["host_s"] == 0.0
        extra = 2 * TINY.n_layers if case.phase == "prefill" else 0     # it also stores the prompt's KV
        assert r["kernels"] == kernels_per_pass(TINY, case.phase) + extra


def test_reference_model_runs_prefill_and_decode() -> None:
    model = ReferenceModel(torch, TINY, device="cpu", impl="loop")
    for case in (Case("prefill", 2, 8), Case("decode", 3, 5)):
        model.prepare(case)
        with torch.inference_mode():
            ids = model.forward()
        assert ids.shape == (case.batch,)


def test_attention_variants_match_the_engine_arithmetic() -> None:
    from moesim.spec.model import ModelShape
    spec = resolve_model("deepseek-v3")
    pre, dec = attention_variants(spec, tp=8)
    shape = ModelShape.build(spec)
    assert dec["flops_per_pair"] == shape.attn_flops_per_pair(decode=True) * (1.0 / 8)
    assert dec["kv_heads"] == 1 and dec["qk_dim"] == 576 and dec["v_dim"] == 512
    assert pre["kv_bytes_per_token"] == shape.kv_bytes_per_token_per_gpu(8) / spec.n_layers
    assert resolve_model("mixtral-8x7b", layers=2).n_layers == 2
    with pytest.raises(ConfigError, match="scale"):
        resolve_model("deepseek-v3@2")
