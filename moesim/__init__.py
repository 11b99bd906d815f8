"""moesim: a discrete-event simulator for Mixture-of-Experts cluster training and inference."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_scenario", "run"]


def __getattr__(name: str):  # noqa: ANN202 - lazy public API keeps `import moesim` light
    if name == "run":
        from moesim.engine.run import run
        return run
    if name == "load_scenario":
        from moesim.config.load import load_scenario
        return load_scenario
    raise AttributeError(name)
