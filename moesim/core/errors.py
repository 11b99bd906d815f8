"""The moesim exception tree.

::

    MoesimError
    ├── ConfigError          bad scenario / preset / override (exit code 2)
    │   └── TraceFormatError malformed trace file row (names file and line)
    ├── TopologyError        dangling port, zero capacity, unreachable GPU
    ├── CapacityError        a model, placement or batch does not fit in memory (exit code 2)
    ├── InfeasiblePlacement  a placement policy cannot satisfy its constraints (exit code 3)
    └── MissingExtra         an optional dependency is not installed

Every message names the offending field and says what would fix it.
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "ConfigError",
    "InfeasiblePlacement",
    "MissingExtra",
    "MoesimError",
    "TopologyError",
    "TraceFormatError",
]


class MoesimError(Exception):
    """Base of all errors moesim raises on purpose."""

    exit_code = 1


class ConfigError(MoesimError):
    """A scenario, preset or override is invalid. ``field`` is the dotted path at fault."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class TraceFormatError(ConfigError):
    """A trace file has a malformed row; the message carries the file and 1-based line number."""


class TopologyError(MoesimError):
    """A topology description is inconsistent (dangling port, zero capacity, unreachable GPU)."""

    exit_code = 2


class CapacityError(MoesimError):
    """Something does not fit: weights in HBM, a placement in its slots, KV for one request.

    Raised while a scenario is set up, so the CLI treats it as bad input (exit code 2).
    """

    exit_code = 2


class InfeasiblePlacement(MoesimError):
    """A placement policy could not satisfy its constraints."""

    exit_code = 3


class MissingExtra(MoesimError):
    """An optional dependency is missing; the message says which ``pip install`` fixes it."""

    exit_code = 2
