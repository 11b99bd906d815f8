"""The training simulator (issue 6): mesh, pipeline schedules, step DES, routing dynamics, faults.

``run_training(scenario)`` is what ``moesim.engine.run.run`` calls when ``scenario.training`` is set.
"""

from moesim.engine.training.run import run_training

__all__ = ["run_training"]
