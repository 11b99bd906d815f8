"""Training outputs: report panels, inference reports unchanged, the CLI on the Qwen3 scenario."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from train_helpers import moe_scenario

from moesim.cli import main
from moesim.engine.training import run_training
from moesim.report.figures import build_figures
from moesim.report.training_figures import TRAINING_PANELS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "report"))


def test_training_panels_render() -> None:
    res = run_training(moe_scenario(stragglers={"slow_gpus": 1}, failures={"inject_at_s": [50.0]}, train_tokens=1e8,
                                    gate={"capacity_factor": 1.0}))
    figs = build_figures(res)
    for name, _ in TRAINING_PANELS:
        assert name in figs, name
    ops = res.train_timeline[res.train_timeline["kind"].isin(["forward", "backward"])]
    assert len(ops) == 2 * res.summary["micro_batches"] * 2          # F and B per micro-batch per stage (pp=2)
    assert len(res.train_failures) == 1


def test_inference_report_has_no_training_panels() -> None:
    from fake_result import make_result

    figs = build_figures(make_result())
    assert not any(name.startswith("train_") for name in figs)


def test_cli_runs_the_qwen3_scenario_with_a_gate_override(tmp_path: Path) -> None:
    out = tmp_path / "q"
    code = main(["run", str(REPO / "scenarios" / "qwen3-30b-train.yaml"), "--set", "training.gate.kind=loss_free_bias",
                 "--set", "training.steps=20", "--set", "training.detail_step=19", "-o", str(out), "-q"])
    assert code == 0
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["mode"] == "training" and summary["gate"] == "loss_free_bias"
    html = (out / "report.html").read_text()
    for name, _ in TRAINING_PANELS:
        assert f'data-figure="{name}"' in html


def test_cli_reports_a_bad_mesh_as_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(REPO / "scenarios" / "qwen3-30b-train.yaml"), "--set", "training.parallel.pp=3",
                 "-o", str(tmp_path / "x"), "-q"])
    assert code == 2 and "training.parallel.pp" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["deepseek-v3-train-2048xh800", "qwen3-30b-train"])
def test_shipped_training_scenarios_take_a_step(name: str) -> None:
    from moesim.config.load import load_scenario

    scenario = load_scenario(REPO / "scenarios" / f"{name}.yaml", ["training.steps=1", "training.detail_step=0"])
    res = run_training(scenario)
    s = res.summary
    assert s["oom_steps"] == 0 and 0.05 < s["mfu"] < 0.8 and s["step_time_mean_s"] > 0
