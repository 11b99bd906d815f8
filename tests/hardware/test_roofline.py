"""The roofline CostModel: memory- vs compute-bound operators and the small-GEMM penalty."""

from __future__ import annotations

import numpy as np

from moesim.config.presets import load_gpu
from moesim.config.schema import CostCfg
from moesim.hardware.cost import ConstantCost, RooflineCost

GPU = load_gpu("h100-sxm")
COST = RooflineCost(GPU, CostCfg(kernel_overhead_s=0.0))


def test_small_gemm_is_memory_bound_large_gemm_compute_bound() -> None:
    k = n = 8192
    small, large = COST.gemm_s(np.array([1.0]), k, n)[0], COST.gemm_s(np.array([16384.0]), k, n)[0]
    assert small == (k * n * 2 + 1 * (k + n) * 2) / COST.bytes_per_s
    assert large == 2 * 16384 * k * n / COST.flops_per_s


def test_many_small_expert_gemms_cost_more_per_token_than_few_large() -> None:
    d, f = 7168, 2048
    spread = np.full(32, 32.0)                 # 1,024 tokens over 32 experts
    concentrated = np.zeros(32)
    concentrated[:4] = 256.0                   # the same 1,024 tokens over 4 experts
    assert COST.grouped_ffn_s(spread, d, f) > 2 * COST.grouped_ffn_s(concentrated, d, f)


def test_tile_padding_only_matters_below_the_tile() -> None:
    d, f = 4096, 1024
    padded = RooflineCost(GPU, CostCfg(kernel_overhead_s=0.0, gemm_tile_rows=128))
    unpadded = RooflineCost(GPU, CostCfg(kernel_overhead_s=0.0, gemm_tile_rows=1))
    big = np.full(8, 4096.0)
    assert padded.grouped_ffn_s(big, d, f) == unpadded.grouped_ffn_s(big, d, f)
    odd = np.full(64, 385.0)                   # compute-bound (intensity 385 FLOP/B > ridge ~258): 4 tiles = 512 rows
    assert padded.grouped_ffn_s(odd, d, f) > 1.25 * unpadded.grouped_ffn_s(odd, d, f)


def test_vectorised_over_leading_dims_and_zero_tokens_cost_nothing() -> None:
    counts = np.zeros((3, 5, 8))
    counts[1, 2, 3] = 10
    t = COST.grouped_ffn_s(counts, 1024, 1024)
    assert t.shape == (3, 5) and t[0, 0] == 0.0 and t[1, 2] > 0
    assert ConstantCost(CostCfg()).gemm_s(np.ones(4), 8, 8).tolist() == [0.0] * 4
