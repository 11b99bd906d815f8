"""Replicas whose traffic crosses the same links slow each other down (flow network model)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from moesim.config.load import load_scenario
from moesim.engine.run import run

from shared_uplink import shared_uplink_sets


def _run(tmp_path: Path, replicas: int, model: str = "flow", contention: bool = True) -> pd.Series:
    sc = load_scenario("default", [
        *shared_uplink_sets(tmp_path, replicas, model), f"hardware.network.contention={str(contention).lower()}",
        "workload.duration_s=20", f"workload.rate_per_s={4 * replicas}"])
    return pd.Series(run(sc).summary)


def test_replicas_sharing_the_uplink_slow_each_other(tmp_path: Path) -> None:
    """Same requests, same replicas: only whether their traffic interacts differs."""
    isolated, shared = _run(tmp_path, 2, contention=False), _run(tmp_path, 2)
    assert shared["comm_fraction"] > isolated["comm_fraction"]
    assert shared["tpot_mean_s"] > isolated["tpot_mean_s"]
    assert shared["e2e_mean_s"] > isolated["e2e_mean_s"]


def test_one_replica_loads_the_uplink_half_as_much_as_two(tmp_path: Path) -> None:
    alone, together = _run(tmp_path, 1), _run(tmp_path, 2)
    assert together["link_utilisation_max"] > 1.5 * alone["link_utilisation_max"]


def test_shared_link_share_follows_max_min() -> None:
    """Another replica using 30 % of the shared link leaves 70 %; using 60 % or all of it leaves the
    max-min fair half."""
    import numpy as np

    from moesim.engine.traffic import SharedLinks

    class Net:  # two replicas whose only route is one shared link (index 0) plus private links
        capacity_bytes_per_s = np.array([100.0, 100.0, 100.0])

        def group_routes(self, gpus: tuple[int, ...]) -> object:
            from types import SimpleNamespace
            links = np.array([[0, 1 + gpus[0] // 2]])
            return SimpleNamespace(incidence=SimpleNamespace(links=links, n_links=3))

    shared = SharedLinks(Net(), ((0, 1), (2, 3)))
    assert shared.contended.tolist() == [True, True]
    mine = np.array([50.0, 0.0, 0.0])                     # 0.5 s alone on the shared link
    shared.begin(1, np.array([30.0, 0.0, 0.0]), 1.0)      # the other replica: 30 B/s on it
    assert shared.slowdown(0, mine) == pytest.approx(1 / 0.7)
    shared.begin(1, np.array([60.0, 0.0, 0.0]), 1.0)
    assert shared.slowdown(0, mine) == 2.0
    shared.begin(1, np.array([100.0, 0.0, 0.0]), 1.0)     # saturating it
    assert shared.slowdown(0, mine) == 2.0                 # the max-min fair half
    shared.end(1)
    assert shared.slowdown(0, mine) == 1.0


def test_the_closed_form_model_has_no_interaction(tmp_path: Path) -> None:
    alone, together = _run(tmp_path, 1, "simple"), _run(tmp_path, 2, "simple")
    assert together["tpot_p50_s"] == alone["tpot_p50_s"] or abs(together["comm_fraction"] - alone["comm_fraction"]) < 0.02
