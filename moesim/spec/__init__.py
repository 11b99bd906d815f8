"""Model architecture → parameter counts, KV bytes and FLOPs per operator."""

from moesim.spec.model import ModelShape

__all__ = ["ModelShape"]
