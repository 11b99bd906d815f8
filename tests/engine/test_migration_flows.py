"""Expert-weight migrations are DES flows: two replicas migrating over one uplink slow each other
(topology: ``shared_uplink.py``, two 2-GPU replicas across one 25 GB/s uplink)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.config.load import load_scenario
from moesim.engine.run import run

from shared_uplink import shared_uplink_sets


def _run(tmp_path: Path, replicas: int, model: str = "flow"):  # noqa: ANN202
    return run(load_scenario("default", [
        *shared_uplink_sets(tmp_path, replicas, model), "workload.duration_s=12", f"workload.rate_per_s={2 * replicas}",
        "placement.kind=eplb", "placement.redundant_experts=4", "placement.plan_from=uniform",
        "placement.replan_interval_s=5", "placement.replan_delay_s=0", "routing.zipf_s=1.2"]))


def test_concurrent_migrations_share_the_uplink(tmp_path: Path) -> None:
    alone, both = _run(tmp_path, 1), _run(tmp_path, 2)
    assert len(alone.migrations) and len(both.migrations)
    first = alone.migrations.iloc[0]
    pair = both.migrations.sort_values("time_s").iloc[:2]
    assert set(pair["replica"]) == {0, 1}
    assert abs(pair["time_s"].iloc[1] - pair["time_s"].iloc[0]) < pair["pause_s"].min()   # in flight together
    # every copy crosses the 25 GB/s uplink one way or the other: alone it takes bytes / 25 GB/s per
    # direction at best; two replicas moving at the same time each get about half of it
    assert first["pause_s"] >= first["bytes"] / 2 / 25e9 * 0.99
    per_byte_alone = first["pause_s"] / first["bytes"]
    assert (pair["pause_s"] / pair["bytes"]).min() > 1.5 * per_byte_alone
    s = both.summary
    assert s["flow_transfers"] == len(both.migrations[both.migrations["bytes"] > 0])
    assert s["migration_pause_s"] == pytest.approx(both.migrations["pause_s"].sum())


def test_migration_flows_land_on_the_link_tables(tmp_path: Path) -> None:
    res = _run(tmp_path, 1)
    moved = res.migrations["bytes"].sum()
    assert moved > 0
    assert res.links["bytes"].sum() >= 2 * moved * 0.999  # each byte crosses at least two links


def test_closed_form_network_costs_migrations_without_flows(tmp_path: Path) -> None:
    res = _run(tmp_path, 1, model="simple")
    assert "flow_transfers" not in res.summary and res.summary["migration_pause_s"] > 0
