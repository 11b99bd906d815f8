"""The ``moesim`` CLI: bad input is one stderr line naming the field and the fix, with exit code 2.

Most tests call ``moesim.cli.main`` in-process; one runs the installed console script in a
subprocess to check the real entry point, exit status and stream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.cli import main
from moesim.config.presets import list_presets

SHORT = ["--set", "workload.duration_s=5"]
"""Keeps any run that unexpectedly gets past set-up short."""


def _run(tmp_path: Path, *args: str) -> list[str]:
    """argv of ``moesim run`` on the default scenario (quiet, no report, output under tmp_path)."""
    return ["run", "default", "-q", "--no-report", "-o", str(tmp_path / "out"), *SHORT, *args]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single ``error: ...`` line on stderr (fails when there are more lines or stdout output)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{captured.err}"
    assert lines[0].startswith("error: "), lines[0]
    assert captured.out == ""
    return lines[0]


def _assert_bad_input(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """``main(argv)`` exits 2 with one stderr line containing every fragment."""
    assert main(argv) == 2
    line = _error_line(capsys)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


# --------------------------------------------------------------------------- typos and bad values
def test_typo_key_in_scenario_file_names_dotted_path_and_suggests_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "typo.yaml"
    scenario.write_text("deployment: {replcas: 2}\n")
    _assert_bad_input(["config", str(scenario)], capsys, "deployment.replcas", "'replicas'")


def test_typo_key_in_scenario_file_fails_run_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "typo.yaml"
    scenario.write_text("deployment: {replcas: 2}\n")
    _assert_bad_input(["run", str(scenario), "-q", "--no-report", "-o", str(tmp_path / "out")], capsys,
                      "deployment.replcas", "did you mean 'replicas'")
    assert not (tmp_path / "out").exists()


def test_typo_key_via_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "routing.kindd=zipf"), capsys,
                      "routing.kindd", "did you mean 'kind'")


def test_invalid_value_via_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "deployment.replicas=0"), capsys,
                      "deployment.replicas", "greater than 0", "got 0")


def test_unparseable_duration_says_how_to_write_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "workload.duration_s=soon"), capsys,
                      "workload.duration_s", "'soon'", "2ms")


def test_unknown_router_kind_lists_the_choices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "router.kind=random"), capsys,
                      "router.kind", "'random'", "round_robin", "least_outstanding")


def test_unknown_workload_kind_names_the_kind_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "workload.kind=pareto"), capsys,
                      "workload.kind", "'pareto'", "'poisson'", "'azure_trace'")


def test_missing_required_key_of_inline_spec_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "inline.yaml"
    scenario.write_text("model: {name: tiny, n_layers: 2}\n")
    line = _assert_bad_input(["config", str(scenario)], capsys, "model.hidden_size", "missing")
    assert "valid string" not in line  # the inline spec's problem, not "model is not a preset name"


def test_set_without_equals_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "deployment.replicas"), capsys,
                      "--set", "'deployment.replicas'", "key.path=value")


# --------------------------------------------------------------------------- parallelism and memory
def test_attention_tp_times_dp_must_equal_gpus_per_replica(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "deployment.attention_tp=2"), capsys,
                      "deployment", "attention_tp x attention_dp", "gpus_per_replica=4",
                      "change attention_tp or attention_dp")


def test_ep_times_expert_tp_must_equal_gpus_per_replica(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "deployment.ep=2"), capsys,
                      "deployment", "ep x expert_tp", "gpus_per_replica=4", "change ep or expert_tp")


def test_experts_not_divisible_by_ep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 6 GPUs: 32 heads / attention_tp=2 is fine, 8 experts / ep=6 is not
    _assert_bad_input(_run(tmp_path, "--set", "model=mixtral-8x7b", "--set", "deployment.replicas=1",
                           "--set", "deployment.gpus_per_replica=6", "--set", "deployment.attention_tp=2",
                           "--set", "deployment.attention_dp=3", "--set", "deployment.ep=6"), capsys,
                      "deployment.ep", "8 experts", "mixtral-8x7b", "ep=6", "divides the expert count")


def test_heads_not_divisible_by_attention_tp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 6 GPUs: 8 experts / ep=2 is fine, 32 heads / attention_tp=6 is not
    _assert_bad_input(_run(tmp_path, "--set", "model=mixtral-8x7b", "--set", "deployment.replicas=1",
                           "--set", "deployment.gpus_per_replica=6", "--set", "deployment.attention_tp=6",
                           "--set", "deployment.ep=2", "--set", "deployment.expert_tp=3"), capsys,
                      "deployment.attention_tp", "32 attention heads", "attention_tp=6", "divides the head count")


def test_more_gpus_than_the_topology_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "deployment.replicas=3"), capsys,
                      "deployment.replicas", "12 GPUs", "'h100-8gpu-node' has 8", "lower deployment.replicas")


def test_model_that_does_not_fit_in_hbm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "model=deepseek-v3", "--set", "hardware.topology=h100-8gpu-node",
                           "--set", "deployment.replicas=1", "--set", "deployment.gpus_per_replica=1",
                           "--set", "deployment.attention_tp=1", "--set", "deployment.ep=1"), capsys,
                      "deployment", "deepseek-v3 does not fit on h100-sxm", "raise deployment.gpus_per_replica")


# --------------------------------------------------------------------------- presets and files
def test_unknown_model_preset_lists_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "model=mixtral-8x8b"), capsys,
                      "model:", "unknown model preset 'mixtral-8x8b'", "did you mean 'mixtral-8x7b'",
                      "deepseek-v3", "moesim presets")


def test_unknown_gpu_preset_lists_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "hardware.gpu=h100"), capsys,
                      "hardware.gpu:", "unknown GPU preset 'h100'", "h100-sxm", "moesim presets")


def test_unknown_topology_preset_lists_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(_run(tmp_path, "--set", "hardware.topology=h100-16gpu-node"), capsys,
                      "hardware.topology:", "unknown topology preset 'h100-16gpu-node'", "h100-8gpu-node",
                      "moesim presets")


def test_unknown_scenario_preset_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    _assert_bad_input(["config", "defualt"], capsys,
                      "scenario:", "unknown scenario preset 'defualt'", "did you mean 'default'")


def test_missing_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.yaml"
    _assert_bad_input(["run", str(missing), "-q", "-o", str(tmp_path / "out")], capsys,
                      "scenario:", f"no scenario file at {missing}", "give a YAML path or a preset")


def test_malformed_yaml_is_one_line_with_its_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndeployment: [1, 2\n")
    _assert_bad_input(["config", str(bad)], capsys, "scenario:", str(bad), "invalid YAML", "line 3, column 1")


def test_scenario_file_that_is_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    _assert_bad_input(["config", str(bad)], capsys, "scenario:", "expected a mapping at the top level")


# --------------------------------------------------------------------------- the console script
def _console_script() -> str:
    here = Path(sys.executable).with_name("moesim")
    found = str(here) if here.is_file() else shutil.which("moesim")
    if found is None:
        pytest.skip("the moesim console script is not installed (pip install -e .)")
    return found


def test_console_script_exits_2_with_one_line_on_stderr(tmp_path: Path) -> None:
    scenario = tmp_path / "typo.yaml"
    scenario.write_text("deployment: {replcas: 2}\n")
    proc = subprocess.run([_console_script(), "run", str(scenario), "-q", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: deployment.replcas: unknown key 'replcas'; did you mean 'replicas'?"]


# --------------------------------------------------------------------------- happy paths
def test_run_writes_run_json_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", "default", "-o", str(out), "--set", "workload.duration_s=10", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    data = json.loads((out / "run.json").read_text())
    assert {"config", "provenance", "summary"} <= set(data)
    assert data["summary"]["scenario"] == "default"
    assert data["summary"]["requests_arrived"] > 0
    assert data["config"]["workload"]["duration_s"] == 10
    assert (out / "report.html").stat().st_size > 0
    assert (out / "requests.csv").is_file()


def test_presets_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    for kind in ("models", "gpus", "topologies", "scenarios"):
        names = list_presets(kind)
        assert names, kind
        assert set(names) <= listed, kind
    assert "models:" in out and "gpus:" in out


def test_config_prints_the_resolved_scenario_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "default", "--set", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out.splitlines()
    assert "name: default" in out.splitlines()
