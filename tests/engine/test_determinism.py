"""Same scenario and seed give identical results, also twice in one process; seeds matter."""

from __future__ import annotations

import json

from moesim.config.load import load_scenario
from moesim.engine.run import run

VOLATILE = {"created_at", "wall_s"}


def _stable_json(result) -> str:  # noqa: ANN001
    d = result.to_json_dict()
    d["provenance"] = {k: v for k, v in d["provenance"].items() if k not in VOLATILE}
    return json.dumps(d, sort_keys=True)


def test_same_seed_twice_in_one_process_is_identical() -> None:
    sc = load_scenario("default", ["workload.duration_s=10"])
    a, b = run(sc), run(sc)
    assert _stable_json(a) == _stable_json(b)
    assert a.requests.equals(b.requests)


def test_another_seed_changes_the_run() -> None:
    a = run(load_scenario("default", ["workload.duration_s=10", "seed=1"]))
    b = run(load_scenario("default", ["workload.duration_s=10", "seed=2"]))
    assert a.summary["requests_arrived"] != b.summary["requests_arrived"] or not a.requests.equals(b.requests)
    assert a.provenance["scenario_hash"] != b.provenance["scenario_hash"]
