"""Grouped-expert lookups: a GPU's resident-expert count between measured tables stays in domain."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.hardware.calibrated import CalibratedCost
from moesim.hardware.profile import load_profile

H200 = Path(__file__).resolve().parents[2] / "calibration" / "h200-sxm.json"


def test_sixteen_resident_experts_read_the_64_expert_table() -> None:
    """OLMoE (hidden 2048, expert intermediate 1024) was measured with 64 and 8 resident experts;
    EP4 leaves 16 per GPU. The 8-expert table cannot hold 16 active experts; the 64-expert one
    can, and its empty experts cost next to nothing, so the query is answered there, in domain."""
    cost = CalibratedCost(load_profile(H200))
    loads = np.zeros(16)
    loads[:12] = 40                                     # 12 active experts of 16, 40 tokens each
    t16 = float(cost.grouped_ffn_s(loads, 2048, 1024))
    assert sum(cost.out_of_domain.values()) == 0
    wide = np.zeros(64)
    wide[:12] = 40                                      # the same active experts among 64 resident
    assert float(cost.grouped_ffn_s(wide, 2048, 1024)) == t16
    assert t16 > 0
