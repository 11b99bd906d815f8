"""GPU specs and the CostModel protocol (roofline, constant; calibrated tables later)."""

from moesim.hardware.cost import ConstantCost, CostModel, RooflineCost, build_cost_model

__all__ = ["ConstantCost", "CostModel", "RooflineCost", "build_cost_model"]
