"""Variable-length batches and the tiled topology."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config.schema import LengthDist
from moesim.config.topology import load_topology
from moesim.config.training import TrainDataCfg
from moesim.network.collectives import SimpleCollectives
from moesim.network.tiled import fast_topology, tiled_topology
from moesim.network.topology import Topology
from moesim.workload.training_data import training_batch

DOCS = LengthDist(kind="lognormal", mean=1500, cv=1.5, low=16, high=32768)


def test_fixed_batch_is_full_sequences() -> None:
    b = training_batch(TrainDataCfg(seq_len=1024, micro_batch_seqs=2), ranks=3, micro_batches=4,
                       rng=np.random.default_rng(0))
    assert b.tokens.shape == (3, 4) and (b.tokens == 2048).all() and (b.pairs == 2 * 1024 * 1025 / 2).all()


def test_packing_keeps_tokens_and_cuts_attention() -> None:
    cfg = TrainDataCfg(seq_len=4096, documents=DOCS)
    b = training_batch(cfg, ranks=8, micro_batches=16, rng=np.random.default_rng(0))
    assert (b.tokens == 4096).all()
    assert (b.pairs <= 4096 * 4097 / 2).all() and b.pairs.min() < 0.5 * 4096 * 4097 / 2


def test_length_aware_lowers_the_slowest_rank() -> None:
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    plain = training_batch(TrainDataCfg(seq_len=4096, documents=DOCS), ranks=16, micro_batches=32, rng=rng_a)
    aware = training_batch(TrainDataCfg(seq_len=4096, documents=DOCS, balance="length_aware"), ranks=16,
                           micro_batches=32, rng=rng_b)
    assert (aware.tokens == 4096).all()
    assert aware.pairs.max(axis=0).sum() < 0.8 * plain.pairs.max(axis=0).sum()
    spread = aware.pairs.max(axis=0) - aware.pairs.mean(axis=0)
    assert spread.mean() < 0.3 * (plain.pairs.max(axis=0) - plain.pairs.mean(axis=0)).mean()


def test_unpacked_token_counts_vary() -> None:
    b = training_batch(TrainDataCfg(seq_len=4096, documents=DOCS, packing=False), ranks=4, micro_batches=8,
                       rng=np.random.default_rng(0))
    assert b.tokens.std() > 0 and (b.tokens <= 4096).all()


@pytest.mark.parametrize("name", ["h100-4node-rail", "h200-2node-rail", "h100-8gpu-node"])
def test_tiled_topology_matches_the_full_graph(name: str) -> None:
    spec = load_topology(name)
    full, tiled = Topology.from_spec(spec), tiled_topology(spec)
    assert np.array_equal(full.bottleneck_bytes_per_s, np.asarray(tiled.bottleneck_bytes_per_s))
    assert np.allclose(full.latency_s, np.asarray(tiled.latency_s))
    a, b = SimpleCollectives(full), SimpleCollectives(tiled)
    group = tuple(range(0, full.n_gpus, 3))
    assert a.all_reduce_s(group, 1e8) == b.all_reduce_s(group, 1e8)
    assert a.p2p_s(0, full.n_gpus - 1, 1e6) == b.p2p_s(0, full.n_gpus - 1, 1e6)


def test_h800_2048_builds_fast_and_degrades() -> None:
    topo = tiled_topology(load_topology("h800-2048"))
    assert (topo.n_gpus, topo.n_nodes) == (2048, 256)
    assert topo.bottleneck_bytes_per_s[0, 1] == 200e9 and topo.bottleneck_bytes_per_s[0, 2047] == 50e9
    bad = topo.degrade_nodes([1], 0.5)
    assert bad.bottleneck_bytes_per_s[0, 8] == 25e9 and bad.bottleneck_bytes_per_s[0, 16] == 50e9
    assert bad.bottleneck_bytes_per_s[8, 9] == 200e9          # NVLink inside the degraded host untouched


@pytest.mark.parametrize("name", ["leaf-spine-128-2to1", "h800-deepseek-2048"])
def test_leaf_spine_fabrics_are_not_tiled_from_two_hosts(name: str) -> None:
    """Two hosts may share a leaf or not: the fast topology keeps the full fabric's matrices."""
    spec = load_topology(name)
    fast, full = fast_topology(spec), Topology.from_spec(spec)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, full.n_gpus, 500), rng.integers(0, full.n_gpus, 500)
    assert np.allclose(fast.latency_s[i, j], full.latency_s[i, j])
    assert np.array_equal(fast.bottleneck_bytes_per_s[i, j], full.bottleneck_bytes_per_s[i, j])
    bad = fast.degrade_nodes([1], 0.5)
    g = spec.gpus_per_node
    assert bad.bottleneck_bytes_per_s[0, g] == 0.5 * spec.nic_bandwidth           # host 0 -> host 1
    assert bad.bottleneck_bytes_per_s[0, 2 * g] == full.bottleneck_bytes_per_s[0, 2 * g]
    assert bad.bottleneck_bytes_per_s[g, g + 1] == full.bottleneck_bytes_per_s[g, g + 1]   # inside host 1
