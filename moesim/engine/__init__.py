"""The discrete-event simulation (the only SimPy user)."""

from moesim.engine.run import run

__all__ = ["run"]
