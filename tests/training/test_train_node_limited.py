"""Node-limited routing and hierarchical dispatch: closed-form inter-host bytes per token, the
bound of M host transfers per token, and the effect on the simulated all-to-all."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from pydantic import ValidationError
from train_helpers import merge

from moesim.config.schema import Scenario
from moesim.config.training import DispatchCfg
from moesim.engine.training import run_training
from moesim.engine.training.dispatch import EpDispatch, keep_factor

HIDDEN, BYTES, K, E = 1024, 2.0, 8, 64
TOKEN = HIDDEN * BYTES
NODE_OF = np.repeat(np.arange(4), 8)            # 4 hosts x 8 GPUs


def _dispatch(kind: str = "hierarchical", max_nodes: int | None = None, group: int = 32) -> EpDispatch:
    return EpDispatch(DispatchCfg(kind=kind, max_nodes=max_nodes), node_of=NODE_OF, group=tuple(range(group)),
                      expert_tp=1, hidden=HIDDEN, act_bytes=BYTES, top_k=K, n_experts=E)


UNIFORM = np.full(32, 1000.0 * K / 32)          # 1000 tokens, top-8, spread evenly over 32 ranks


def _host_hit() -> float:
    """A uniform top-8 of 64 experts touches a given host (16 experts) with this probability."""
    return 1.0 - comb(E - 16, K) / comb(E, K)


def test_unconstrained_hierarchical_and_direct_closed_forms() -> None:
    hier = float(_dispatch().internode_bytes_per_token(UNIFORM))
    assert hier == pytest.approx(4 * _host_hit() * 0.75 * TOKEN, rel=1e-12)      # each remote host once
    direct = float(_dispatch("direct").internode_bytes_per_token(UNIFORM))
    assert direct == pytest.approx(K * 0.75 * TOKEN, rel=1e-12)                   # every remote slot once


def test_max_nodes_bounds_and_orders_the_internode_bytes() -> None:
    free = float(_dispatch().internode_bytes_per_token(UNIFORM))
    got = {m: float(_dispatch(max_nodes=m).internode_bytes_per_token(UNIFORM)) for m in (1, 2, 3, 4, 8)}
    assert got[4] == got[8] == free                   # max_nodes >= the group's hosts: no limit
    assert got[1] < got[2] < got[3] < got[4]
    for m, v in got.items():
        assert v <= min(m, 4) * TOKEN + 1e-9
    # M = 1: one host per token, remote for 3 of 4 sources (the token reaches some host unless the
    # independent-hit model draws none)
    p = _host_hit()
    assert got[1] == pytest.approx(0.75 * (1.0 - (1.0 - p) ** 4) * TOKEN, rel=1e-12)


def test_one_host_groups_send_nothing_across_hosts() -> None:
    one = _dispatch(max_nodes=1, group=8)
    assert float(one.internode_bytes_per_token(np.full(8, 1000.0))) == 0.0
    assert float(_dispatch("direct", group=8).internode_bytes_per_token(np.full(8, 1000.0))) == 0.0


def test_keep_factor_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 0.9, size=5)
    for m in (1, 2, 3):
        want = np.zeros(5)
        for mask in range(1 << 5):
            hit = np.array([(mask >> i) & 1 for i in range(5)], bool)
            prob = np.prod(np.where(hit, p, 1 - p))
            if hit.any():
                want += prob * hit * min(1.0, m / hit.sum())
        assert keep_factor(p, m) * p == pytest.approx(want, rel=1e-12)


def test_traffic_pattern_sums() -> None:
    t = _dispatch(max_nodes=2).traffic(UNIFORM)
    assert t.pair.shape == (32, 32) and t.node.shape == (32, 4)
    hosts_per_token = t.node.sum(axis=-1) / (1000.0 / 32)                        # every source alike
    assert hosts_per_token == pytest.approx(np.full(32, hosts_per_token[0])) and hosts_per_token[0] <= 2.0
    assert float(t.internode) == pytest.approx(0.75 * hosts_per_token[0])       # 3 of 4 hosts are remote
    gpus_per_token = t.pair.sum(axis=-1) / (1000.0 / 32)                         # destination GPUs, once each
    assert hosts_per_token[0] <= gpus_per_token[0] <= K


def _scenario(**training) -> Scenario:
    tree = {"name": "t-rail", "seed": 0, "model": "olmoe-1b-7b",
            "hardware": {"gpu": "h100-sxm", "topology": "h100-4node-rail"}, "routing": {"kind": "zipf", "zipf_s": 1.0},
            "training": merge({"parallel": {"pp": 1, "ep": 32},
                               "data": {"seq_len": 2048, "global_batch_seqs": 64}, "steps": 2}, training)}
    return Scenario.model_validate(tree)


def test_engine_all_to_all_falls_with_max_nodes() -> None:
    runs = {m: run_training(_scenario(dispatch={"kind": "hierarchical", "max_nodes": m})).summary for m in (1, 2, 4)}
    free = run_training(_scenario(dispatch={"kind": "hierarchical"})).summary
    direct = run_training(_scenario()).summary
    assert runs[4]["step_time_mean_s"] == free["step_time_mean_s"]
    assert runs[4]["ep_internode_bytes_per_token"] == free["ep_internode_bytes_per_token"]
    assert runs[1]["step_ep_comm_s"] < runs[2]["step_ep_comm_s"] < free["step_ep_comm_s"] < direct["step_ep_comm_s"]
    b = [runs[m]["ep_internode_bytes_per_token"] for m in (1, 2, 4)]
    assert b[0] < b[1] < b[2] < direct["ep_internode_bytes_per_token"]
    token = 2048 * 2.0                                # OLMoE hidden x bf16
    assert b[0] <= token and b[1] <= 2 * token
    assert runs[1]["step_compute_s"] == direct["step_compute_s"]     # the experts' loads do not change
    assert runs[1]["dispatch"] == "hierarchical (max 1 nodes)"


def test_max_nodes_needs_hierarchical() -> None:
    with pytest.raises(ValidationError, match="set kind: hierarchical"):
        _scenario(dispatch={"max_nodes": 4})
