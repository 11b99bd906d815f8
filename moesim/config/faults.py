"""Network fault specs (``hardware.faults``): degrade or fail a link or device at a simulated time."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from moesim.core import units
from moesim.core.errors import ConfigError

__all__ = ["FaultSpec", "parse_faults"]

Latency = Annotated[float, BeforeValidator(units.parse_seconds), Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FaultSpec(_Frozen):
    """A link or device fault at a simulated time (``moesim.network.faults`` applies it).

    ``target``: ``"a->b"`` one direction of a link, ``"a<->b"`` both directions, or a NIC / switch
    / CPU name (every link touching it). ``degrade`` multiplies the capacities by ``factor``
    (0 < factor <= 1); ``fail`` removes the links (a failed device is removed with them)."""

    at_s: Latency = 0.0
    """Simulated time (s) from which the fault holds."""
    kind: Literal["degrade", "fail"]
    target: str = Field(min_length=1)
    factor: float | None = None
    """``degrade`` only: capacity multiplier in (0, 1]."""

    @model_validator(mode="after")
    def _factor(self) -> FaultSpec:
        if self.kind == "degrade" and (self.factor is None or not 0.0 < self.factor <= 1.0):
            raise ValueError(f"a degrade fault needs factor in (0, 1], got {self.factor}; use kind: fail for 0")
        if self.kind == "fail" and self.factor is not None:
            raise ValueError("a fail fault takes no factor (it removes the link)")
        return self


def parse_faults(items: Any, *, field: str = "faults") -> tuple[FaultSpec, ...]:
    """Fault specs from a YAML list, sorted by ``at_s`` (stable); ConfigError naming the entry."""
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)):
        raise ConfigError("expected a list of faults ({at_s, kind, target, factor})", field=field)
    out = []
    for i, item in enumerate(items):
        try:
            out.append(item if isinstance(item, FaultSpec) else FaultSpec.model_validate(item))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(first["msg"].removeprefix("Value error, "),
                              field=f"{field}[{i}]" + (f".{where}" if where else "")) from None
    return tuple(sorted(out, key=lambda f: f.at_s))
