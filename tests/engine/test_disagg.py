"""Disaggregated prefill / decode: prefill replicas hand each prompt's KV cache to a decode replica."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config.load import load_scenario
from moesim.core.errors import ConfigError
from moesim.engine.build import build_deployment
from moesim.engine.run import run

SETS = ["hardware.topology=h100-4node-rail", "deployment.replicas=4", "deployment.prefill_replicas=2",
        "workload.duration_s=10"]


@pytest.fixture(scope="module", params=["simple", "flow"])
def disagg(request: pytest.FixtureRequest):  # noqa: ANN201
    sc = load_scenario("default", [*SETS, f"hardware.network.model={request.param}"])
    return sc, run(sc)


def test_every_request_is_prefilled_on_one_pool_and_decoded_on_the_other(disagg) -> None:  # noqa: ANN001
    _, res = disagg
    req = res.requests
    assert req["finished"].all()
    multi = req["output_tokens"] > 1
    assert set(req["replica"]) <= {0, 1} and set(req.loc[multi, "decode_replica"]) <= {2, 3}
    assert (req.loc[multi, "kv_transfer_s"] > 0).all() and req.loc[~multi, "kv_transfer_s"].isna().all()
    ts = res.timeseries
    assert ts.loc[ts["replica"] < 2, "decode_tokens"].sum() == 0          # prefill pool never decodes
    assert ts.loc[ts["replica"] >= 2, "prefill_tokens"].sum() == 0         # decode pool never prefills
    assert res.summary["kv_transfers"] == int(multi.sum())
    # the second token waits for the KV cache: TPOT includes the transfer
    assert (req.loc[multi, "finish_s"] >= req.loc[multi, "first_token_s"] + req.loc[multi, "kv_transfer_s"]).all()


def test_kv_bytes_are_the_prompt_cache_of_every_gpu(disagg) -> None:  # noqa: ANN001
    sc, res = disagg
    d = build_deployment(sc)
    req = res.requests
    multi = req["output_tokens"] > 1
    tokens = req.loc[multi, "prompt_tokens"].sum()
    expected = tokens * d.budget.kv_bytes_per_token * sc.deployment.attention_tp
    assert res.summary["kv_transfer_bytes"] == pytest.approx(expected)


def test_closed_form_transfer_is_one_gpu_pair_over_the_nic() -> None:
    sc = load_scenario("default", [*SETS, "hardware.network.model=simple"])
    res, d = run(sc), build_deployment(sc)
    row = res.requests.dropna(subset=["kv_transfer_s"]).iloc[0]
    src, dst = d.replica_gpus[int(row["replica"])][0], d.replica_gpus[int(row["decode_replica"])][0]
    nbytes = row["prompt_tokens"] * d.budget.kv_bytes_per_token
    assert row["kv_transfer_s"] == pytest.approx(float(d.collectives.p2p_s(src, dst, nbytes)), rel=1e-9)


def test_flow_transfers_share_the_network() -> None:
    """A burst of simultaneous prompts: their KV copies share NICs, so the flow model takes longer
    than the closed form, which costs each copy alone."""
    burst = [*SETS, "workload.rate_per_s=200", "workload.duration_s=1"]
    alone = run(load_scenario("default", [*burst, "hardware.network.model=simple"])).requests
    shared = run(load_scenario("default", [*burst, "hardware.network.model=flow"])).requests
    assert np.nanmax(shared["kv_transfer_s"]) > 1.5 * np.nanmax(alone["kv_transfer_s"])


def test_disaggregated_runs_are_deterministic() -> None:
    sc = load_scenario("default", [*SETS, "workload.duration_s=3"])
    a, b = run(sc).requests, run(sc).requests
    assert a.equals(b)


def test_a_pool_without_decode_replicas_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prefill_replicas"):
        load_scenario("default", ["deployment.replicas=2", "deployment.prefill_replicas=2"])
