"""Cluster topology descriptions (YAML) → a frozen ``TopologySpec``.

A topology file has one of two forms.

**Parametric** (``nodes: N``): N identical hosts of ``gpus_per_node`` GPUs joined inside a host by
``intra_node`` (an NVSwitch or a PCIe switch), each host having ``nics_per_node`` NICs that plug
into a ``fabric``::

    name: h100-4node-rail
    gpu: h100-sxm
    nodes: 4
    gpus_per_node: 8
    intra_node: {kind: nvswitch, bandwidth: 450GB/s, latency: 1us}   # per direction
    nics_per_node: 8
    nic_bandwidth: 400Gb/s                                            # per direction
    fabric: {kind: rail_optimized, latency: 3us}

**Explicit** (``devices`` + ``links``): any graph of GPUs, switches and NICs::

    devices: [{name: gpu0, kind: gpu}, {name: gpu1, kind: gpu}, {name: sw, kind: switch}]
    links: [{src: gpu0, dst: sw, bandwidth: 450GB/s}, {src: gpu1, dst: sw, bandwidth: 450GB/s}]

Every bandwidth is **per direction**. Semantic checks (capacities > 0, links naming defined
devices, every GPU reachable) happen when ``moesim.network.Topology`` builds the graph, and raise
``TopologyError``; this module only checks the shape of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from moesim.config.presets import preset_path, read_yaml
from moesim.core import units
from moesim.core.errors import ConfigError

__all__ = ["DeviceSpec", "FabricSpec", "IntraNodeSpec", "LinkSpec", "TopologySpec", "load_topology"]

Rate = Annotated[float, BeforeValidator(units.parse_rate)]
"""Bytes/s per direction; positivity is checked by the graph builder (TopologyError)."""
Latency = Annotated[float, BeforeValidator(units.parse_seconds), Field(ge=0)]

_FIELD = "hardware.topology"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IntraNodeSpec(_Frozen):
    """How the GPUs of one host talk to each other: every GPU has one link to a host switch."""

    kind: Literal["nvswitch", "pcie"] = "nvswitch"
    """``nvswitch``: NVLink to an NVSwitch; ``pcie``: through a PCIe switch."""
    bandwidth: Rate
    """Bytes/s per direction of one GPU's link into the switch (H100 SXM NVLink: 450GB/s)."""
    latency: Latency = 1e-6
    """One-way GPU-to-GPU latency inside a host, seconds (split over the two hops)."""


class FabricSpec(_Frozen):
    """How the hosts' NICs are connected.

    * ``none``: no scale-out network (a single host).
    * ``single_switch``: every NIC plugs into one non-blocking switch.
    * ``rail_optimized``: NIC j of every host plugs into rail switch j; there is no spine, so
      traffic between different rails first crosses NVLink (or PCIe) to the GPU on the
      destination's rail inside the source or destination host (what NCCL's PXN does).
    """

    kind: Literal["rail_optimized", "single_switch", "none"] = "none"
    latency: Latency = 3e-6
    """One-way GPU-to-GPU latency across hosts through the fabric on one rail, seconds (split
    evenly over the four hops GPU→NIC→switch→NIC→GPU)."""


class DeviceSpec(_Frozen):
    """One vertex of an explicit topology."""

    name: str = Field(min_length=1)
    kind: Literal["gpu", "switch", "nic"]
    node: int = Field(0, ge=0)
    """Host index (GPUs and NICs); ignored for switches."""


class LinkSpec(_Frozen):
    """A link of an explicit topology; with ``duplex`` it carries ``bandwidth`` each way."""

    src: str
    dst: str
    bandwidth: Rate
    """Bytes/s per direction."""
    latency: Latency = 0.0
    """One-way latency of this hop, seconds."""
    duplex: bool = True
    """True: two directed edges (src→dst and dst→src); False: src→dst only."""


_PARAMETRIC_KEYS = ("nodes", "gpus_per_node", "intra_node", "nics_per_node", "nic_bandwidth", "fabric")


class TopologySpec(_Frozen):
    """A cluster's GPUs, switches, NICs and links (parametric or explicit form; see module doc)."""

    name: str
    description: str = ""
    source: str = ""
    """Where the bandwidth figures come from."""
    gpu: str = "h100-sxm"
    """GPU preset name (``moesim/presets/gpus``)."""
    # parametric form
    nodes: int | None = Field(None, gt=0)
    """Number of hosts (parametric form)."""
    gpus_per_node: int = Field(8, gt=0)
    intra_node: IntraNodeSpec | None = None
    """Required when gpus_per_node > 1."""
    nics_per_node: int = Field(0, ge=0)
    """Scale-out NICs per host; GPU i uses NIC ``i // (gpus_per_node // nics_per_node)``."""
    nic_bandwidth: Rate | None = None
    """Bytes/s per direction of one NIC (400Gb/s = 5e10)."""
    fabric: FabricSpec = FabricSpec()
    # explicit form
    devices: tuple[DeviceSpec, ...] | None = None
    """Explicit form: every GPU, switch and NIC. GPUs are numbered 0.. in list order."""
    links: tuple[LinkSpec, ...] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> TopologySpec:
        explicit = self.devices is not None or self.links is not None
        if explicit:
            clash = [k for k in _PARAMETRIC_KEYS if k in self.model_fields_set]
            if clash:
                raise ValueError(f"give either devices/links or the parametric keys, not both (found {clash})")
            if self.devices is None or self.links is None:
                raise ValueError("the explicit form needs both devices and links")
            return self
        if self.nodes is None:
            raise ValueError("give either nodes (parametric form) or devices and links (explicit form)")
        if self.gpus_per_node > 1 and self.intra_node is None:
            raise ValueError(f"gpus_per_node={self.gpus_per_node} needs intra_node (kind, bandwidth)")
        if self.nics_per_node:
            if self.nic_bandwidth is None:
                raise ValueError(f"nics_per_node={self.nics_per_node} needs nic_bandwidth")
            if self.gpus_per_node % self.nics_per_node:
                raise ValueError(f"gpus_per_node={self.gpus_per_node} must be a multiple of "
                                 f"nics_per_node={self.nics_per_node}")
        elif self.fabric.kind != "none":
            raise ValueError(f"fabric.kind={self.fabric.kind} needs nics_per_node > 0")
        return self

    @property
    def is_explicit(self) -> bool:
        """True for the devices/links form."""
        return self.devices is not None


def load_topology(name_or_path: str | Path) -> TopologySpec:
    """A topology from a YAML path or a preset name in ``topologies/``; ConfigError when invalid."""
    path = Path(name_or_path)
    if not path.is_file():
        if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise ConfigError(f"no topology file at {path}; give a YAML path or a preset name", field=_FIELD)
        path = preset_path("topologies", str(name_or_path), field=_FIELD)
    tree = read_yaml(path, field=_FIELD)
    try:
        spec = TopologySpec.model_validate(tree)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        field = f"{_FIELD}.{where}" if where else _FIELD
        raise ConfigError(f"{path}: {first['msg'].removeprefix('Value error, ')}", field=field) from None
    preset_path("gpus", spec.gpu, field=f"{_FIELD}.gpu")  # unknown GPU preset: ConfigError listing known ones
    return spec
