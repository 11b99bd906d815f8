"""Expert-parallel traffic patterns: hierarchical (DeepEP normal) and low-latency (DeepEP LL)
all-to-alls on the flow model, DeepEP token matrices and kernels, and predictions against the
measured aiconfigurator tables (skipped where the shared folder is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from moesim.config.presets import load_gpu
from moesim.config.topology import TopologySpec
from moesim.network import SimpleCollectives, Topology
from moesim.network.collectives import NCCL_CALIBRATION
from moesim.network.deepep import (DEEPEP_CALIBRATION, DeepEP, dispatch_token_bytes, ep_tokens, expected_ep_tokens,
                                   hit_probability)
from moesim.network.flow_collectives import FlowCollectives
from moesim.network.generators import fat_tree

TOKEN = 7392.0  # one FP8 token of hidden 7168 with its scales


@pytest.fixture()
def tree() -> FlowCollectives:
    # 4 hosts x 8 GPUs, rail-aligned leaves (4 hosts per leaf), PXN on for ordinary traffic
    return FlowCollectives(fat_tree(32, leaf_radix=8, build_graph=False), efficiency=1.0, per_message_latency_s=0.0)


def _tier_bytes(coll: FlowCollectives) -> dict[str, float]:
    net = coll.network
    return {str(t): float(net.link_bytes()[net.tier == t].sum()) for t in np.unique(net.tier)}


def _routing() -> tuple[np.ndarray, np.ndarray]:
    """GPU 0 routes one token to experts on GPUs 9, 10, 11 (host 1) and 17 (host 2); GPU 5 one
    token to experts on GPUs 2 (its own host) and 25, 26 (host 3). One expert per GPU."""
    return np.array([[9, 10, 11, 17], [2, 25, 26, -1]]), np.array([0, 5])


def test_ep_tokens_count_destinations_hosts_and_copies() -> None:
    topk, src = _routing()
    tok = ep_tokens(topk, src, n_gpus=32, n_experts=32, node_of=np.arange(32) // 8)
    assert tok.pair[0, [9, 10, 11, 17]].tolist() == [1, 1, 1, 1] and tok.pair.sum() == 7
    assert tok.node[0].tolist() == [0, 1, 1, 0] and tok.node[1].tolist() == [0, 0, 0, 0]
    assert tok.node[5].tolist() == [1, 0, 0, 1]
    two_experts_per_gpu = ep_tokens(np.array([[18, 19, 20]]), np.array([0]), n_gpus=32, n_experts=64,
                                    node_of=np.arange(32) // 8)
    assert two_experts_per_gpu.pair[0, 9] == 1 and two_experts_per_gpu.copies[0, 9] == 2  # GPU 9 holds 18, 19


def test_hierarchical_moves_each_remote_token_over_rdma_once_per_destination_host(tree: FlowCollectives) -> None:
    topk, src = _routing()
    tok = ep_tokens(topk, src, n_gpus=32, n_experts=32, node_of=np.arange(32) // 8)
    g = tuple(range(32))
    tree.network.reset_link_bytes()
    tree.all_to_all_s(g, tok.pair * TOKEN, "hierarchical", node_bytes=tok.node * TOKEN)
    hier = _tier_bytes(tree)
    # remote (token, host) pairs: GPU 0 -> hosts 1, 2; GPU 5 -> host 3: three RDMA messages, each on
    # its sender's NIC port and its receiver's (two NIC links), all rail aligned (no leaf trunk)
    assert hier["nic"] == pytest.approx(3 * 2 * TOKEN)
    assert hier["leaf"] == 0.0
    tree.network.reset_link_bytes()
    tree.all_to_all_s(g, tok.pair * TOKEN, "direct")
    direct = _tier_bytes(tree)
    assert direct["nic"] == pytest.approx(6 * 2 * TOKEN)  # one copy per remote destination GPU
    # the forwarded copies cross NVLink on the destination host instead: GPU 8 -> 9, 10, 11 (0 -> 8
    # is rail aligned), 16 -> 17, and GPU 5's tokens: 29 -> 25, 26, plus the local 5 -> 2
    assert hier["nvlink"] == pytest.approx(2 * 7 * TOKEN)


def test_low_latency_pattern_uses_no_nvlink_forwarding(tree: FlowCollectives) -> None:
    g = tuple(range(32))
    pb = np.zeros((32, 32))
    host = np.arange(32) // 8
    pb[host[:, None] != host[None, :]] = 1e6  # every GPU to every GPU of the other hosts
    for algo in ("direct", "hierarchical"):
        tree.network.reset_link_bytes()
        tree.all_to_all_s(g, pb, algo)
        assert _tier_bytes(tree)["nvlink"] > 0  # PXN / rail forwarding crosses NVLink
    tree.network.reset_link_bytes()
    tree.all_to_all_s(g, pb, "low_latency")
    tiers = _tier_bytes(tree)
    assert tiers["nvlink"] == 0.0
    assert tiers["nic"] == pytest.approx(2 * pb.sum())  # straight out of the sender's NIC into the receiver's
    assert tree.topology.pxn  # the topology itself keeps PXN for everything else


def test_expected_tokens_match_sampled_uniform_routing() -> None:
    rng = np.random.default_rng(0)
    n, e, k, t = 16, 64, 6, 4000
    node_of = np.arange(n) // 8
    topk = np.argsort(rng.random((n * t, e)), axis=1)[:, :k]  # uniform distinct top-k
    src = np.repeat(np.arange(n), t)
    sampled = ep_tokens(topk, src, n, e, node_of)
    expected = expected_ep_tokens(t, n, k, e, node_of)
    assert expected.pair[0, 1] == pytest.approx(t * float(hit_probability(e, k, e // n)))
    for a, b in ((sampled.pair, expected.pair), (sampled.node, expected.node), (sampled.copies, expected.copies)):
        assert a.sum() == pytest.approx(b.sum(), rel=0.01)
        assert np.abs(a - b).max() < 5 * np.sqrt(t)  # sampling noise
    assert hit_probability(256, 8, 256) == 1.0 and hit_probability(8, 2, 0) == 0.0


@pytest.fixture(scope="module")
def node_topo() -> Topology:
    spec = {"name": "h100-node", "gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8,
            "intra_node": {"kind": "nvswitch", "bandwidth": 450e9, "latency": 0.5e-6}}
    return Topology.from_spec(TopologySpec.model_validate(spec))


def test_deepep_normal_kernel_is_bound_by_its_sms(node_topo: Topology) -> None:
    coll = SimpleCollectives(node_topo, efficiency=0.7, per_message_latency_s=0.0)
    cal = DEEPEP_CALIBRATION["h100-sxm"]
    ep = DeepEP(coll, tuple(range(8)), cal)
    tok = ep.expected_tokens(65536, top_k=8, n_experts=256)
    sent = tok.pair[0].sum() - tok.pair[0, 0]  # tokens GPU 0 sends to the other 7
    b = dispatch_token_bytes(7168, 8)
    few = ep.dispatch_s(tok, hidden=7168, top_k=8, n_experts=256, num_sms=4)
    sm_s = (sent * (b / cal.normal_dispatch_sm_bytes_per_s + cal.normal_dispatch_sm_s_per_message)
            + 65536 * cal.normal_dispatch_sm_s_per_token) / 4
    assert few == pytest.approx(cal.normal_dispatch_launch_s + 0.5e-6 + sm_s)
    many = ep.dispatch_s(tok, hidden=7168, top_k=8, n_experts=256, num_sms=132)  # NVLink-bound
    assert many == pytest.approx(cal.normal_dispatch_launch_s + 0.5e-6 + sent * b / (0.7 * 450e9))
    tokens = ep.expected_tokens(np.array([1.0, 64.0, 4096.0])[:, None] * np.ones(8), 8, 256)
    for fn in (ep.dispatch_s, ep.combine_s):
        for mode in ("normal", "low_latency"):
            out = fn(tokens, hidden=7168, top_k=8, n_experts=256, mode=mode)
            assert out.shape == (3,) and np.all(np.diff(out) > 0)


def test_deepep_low_latency_fixed_cost_grows_with_experts(node_topo: Topology) -> None:
    ep = DeepEP(SimpleCollectives.calibrated(node_topo), tuple(range(8)), "h100-sxm")
    t = [ep.dispatch_s(ep.expected_tokens(1, 8, e), hidden=4096, top_k=8, n_experts=e, mode="low_latency")
         for e in (64, 256, 512)]
    per_expert = DEEPEP_CALIBRATION["h100-sxm"].ll_dispatch_s_per_expert
    assert t[2] - t[1] == pytest.approx(256 * per_expert, rel=0.05)
    # few experts: the dispatch is sent by few SMs' warps
    slow = ep.dispatch_s(ep.expected_tokens(1024, 2, 8), hidden=4096, top_k=2, n_experts=8, mode="low_latency")
    fast = ep.dispatch_s(ep.expected_tokens(1024, 2, 256), hidden=4096, top_k=2, n_experts=256, mode="low_latency")
    assert slow > 3 * fast


def test_deepep_on_two_hosts_goes_hierarchical(tree: FlowCollectives) -> None:
    ep = DeepEP(tree, tuple(range(16)), "h100-sxm")
    tok = ep.expected_tokens(256, top_k=8, n_experts=256)
    normal = ep.dispatch_s(tok, hidden=7168, top_k=8, n_experts=256, mode="normal")
    ll = ep.dispatch_s(tok, hidden=7168, top_k=8, n_experts=256, mode="low_latency")
    assert 0 < normal and 0 < ll
    assert ep.combine_s(tok, hidden=7168, top_k=8, n_experts=256) > 0


# --------------------------------------------------------------------------- measured tables
DATA = Path(os.environ.get("MOESIM_AIC_DATA", Path(__file__).resolve().parents[3] / "shared" / "traces"
                           / "aiconfigurator-perf-data")) / "data"
TOLERANCE = 0.20
"""Every checked row within 20 % and their median within 10 % (the benchmark's median over all
17,472 rows is ~6 %; the checked rows are held out of the fit, H200's entirely: it uses H100 knobs)."""


def _system_topology(system: str, gpu: str) -> Topology:
    lat = NCCL_CALIBRATION[gpu].nvlink_latency_s
    spec = {"name": system, "gpu": gpu, "nodes": 1, "gpus_per_node": 8,
            "intra_node": {"kind": "nvswitch", "bandwidth": load_gpu(gpu).nvlink_bytes_per_s, "latency": lat}}
    return Topology.from_spec(TopologySpec.model_validate(spec))


@pytest.mark.skipif(not DATA.is_dir(), reason="aiconfigurator-perf-data not available")
@pytest.mark.parametrize("system, gpu", [("h100_sxm", "h100-sxm"), ("h200_sxm", "h200"), ("b200_sxm", "b200")])
def test_predictions_match_measured_rows(system: str, gpu: str) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    comm = DATA / system / "comm"
    coll = FlowCollectives.calibrated(_system_topology(system, gpu))
    g8 = tuple(range(8))
    errors = []
    nccl = pd.read_parquet(comm / "nccl" / "2.29.2" / "nccl_perf.parquet")
    nccl = nccl[(nccl.nccl_dtype == "half") & (nccl.num_gpus == 8)]
    for op, elems in (("all_reduce", 2048), ("all_reduce", 2**19), ("all_gather", 2**25), ("alltoall", 2**19),
                      ("alltoall", 2**25), ("reduce_scatter", 2**11)):
        row = nccl[(nccl.op_name == op) & (nccl.message_size == elems)].iloc[0]
        s = 2.0 * elems
        pred = {"all_reduce": lambda: coll.all_reduce_s(g8, s, "nccl"), "all_gather": lambda: coll.all_gather_s(g8, s),
                "reduce_scatter": lambda: coll.reduce_scatter_s(g8, s),
                "alltoall": lambda: coll.all_to_all_s(g8, np.full((8, 8), s / 8))}[op]()
        errors.append((f"{op} {s:g} B", pred / (row.latency * 1e-3) - 1))
    ep = DeepEP(FlowCollectives.calibrated(_system_topology(system, gpu), nvls=False), g8, gpu)
    ll = pd.read_parquet(comm / "sglang" / "0.5.12" / "wideep_deepep_ll_perf.parquet")
    normal = pd.read_parquet(comm / "sglang" / "0.5.12" / "wideep_deepep_normal_perf.parquet")
    shape = {"hidden": 7168, "top_k": 8, "n_experts": 256}
    for t in (2, 128):
        row = ll[(ll.hidden_size == 7168) & (ll.num_topk == 8) & (ll.num_experts == 256) & (ll.num_token == t)].iloc[0]
        tok = ep.expected_tokens(t, 8, 256)
        errors.append((f"LL dispatch T={t}",
                       ep.dispatch_s(tok, mode="low_latency", **shape) / (row.dispatch_avg_t_us * 1e-6) - 1))
        errors.append((f"LL combine T={t}",
                       ep.combine_s(tok, mode="low_latency", **shape) / (row.combine_avg_t_us * 1e-6) - 1))
    for t, sms in ((16, 24), (1024, 12), (32768, 8)):
        row = normal[(normal.hidden_size == 7168) & (normal.num_topk == 8) & (normal.num_experts == 256)
                     & (normal.num_token == t) & (normal.dispatch_sms == sms)].iloc[0]
        tok = ep.expected_tokens(t, 8, 256)
        errors.append((f"normal dispatch T={t}", ep.dispatch_s(tok, num_sms=sms, **shape)
                       / (row.dispatch_transmit_us * 1e-6) - 1))
        errors.append((f"normal combine T={t}", ep.combine_s(tok, num_sms=sms, **shape)
                       / (row.combine_transmit_us * 1e-6) - 1))
    worst = max(errors, key=lambda e: abs(e[1]))
    assert abs(worst[1]) <= TOLERANCE, f"{system}: {worst[0]} off by {100 * worst[1]:+.1f} %"
    assert np.median([abs(e) for _, e in errors]) <= 0.10, errors


@pytest.mark.parametrize("coll_type", [SimpleCollectives, FlowCollectives])
def test_low_latency_copy_limit_follows_the_topologys_nvlink(coll_type: type) -> None:
    """The LL kernels' SM copy limit is a share of the NVLink rate the topology and the
    collectives give, not of the GPU preset's: a host wired at half the preset's NVLink halves it."""
    half = load_gpu("h100-sxm").nvlink_bytes_per_s / 2
    spec = {"name": "half-nvlink", "gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8,
            "intra_node": {"kind": "nvswitch", "bandwidth": half, "latency": 1e-6}}
    coll = coll_type(Topology.from_spec(TopologySpec.model_validate(spec)), efficiency=0.6, per_message_latency_s=0.0)
    ep = DeepEP(coll, tuple(range(8)), "h100-sxm")
    assert ep.nvlink_bytes_per_s == pytest.approx(225e9 * 0.6, rel=1e-9)
    ll = ep.protocol("combine", "low_latency", hidden=7168, top_k=8, n_experts=256)
    assert ll.injection_bytes_per_s == pytest.approx(DEEPEP_CALIBRATION["h100-sxm"].ll_bw_fraction * 225e9 * 0.6)
