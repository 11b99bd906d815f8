"""Cluster topology descriptions (YAML) → a frozen ``TopologySpec``; fault descriptions.

A topology file has one of two forms. **Every bandwidth is per direction** (bytes/s one way; a
"900 GB/s bidirectional" datasheet figure is written ``450GB/s``), every latency one-way.

**Parametric** (``nodes: N``): N identical hosts ("N nodes of this node type on this fabric").
A host is ``gpus_per_node`` GPUs, optionally joined by an NVLink domain (``intra_node``), a host
side of PCIe switches and CPUs (``host``) and ``nics_per_node`` NICs that plug into a
``fabric``::

    name: h100-4node-rail
    gpu: h100-sxm
    nodes: 4
    gpus_per_node: 8
    intra_node: {kind: nvswitch, bandwidth: 450GB/s, latency: 1us}   # per direction
    host: {link: pcie, bandwidth: 64GB/s, gpus_per_switch: 2, gpus_per_cpu: 4,
           cpu_link_bandwidth: 128GB/s}                              # per direction
    nics_per_node: 8
    nic_bandwidth: 400Gb/s                                            # per direction
    fabric: {kind: leaf_spine, nodes_per_leaf: 8, oversubscription: 2.0, pxn: false}

``node_type: <preset or path>`` takes the host keys (``gpu``, ``gpus_per_node``, ``intra_node``,
``host``, ``nics_per_node``, ``nic_bandwidth``) from another topology file (a one-node file such
as ``hgx-h100-node``); keys given next to it override them.

Fabric kinds: ``none`` (one host), ``single_switch`` (one non-blocking switch), ``rail_optimized``
(NIC j of every host into rail switch j, no spine: traffic between rails needs PXN, which is
therefore on by default), ``leaf_spine`` (two tiers, rail-aligned leaves, configurable
oversubscription) and ``fat_tree`` (two or three tiers of radix-``leaf_radix`` switches, e.g.
16,384 GPUs at radix 64); see ``FabricSpec``.

**Explicit** (``devices`` + ``links``): any graph of GPUs, switches, NICs and CPUs::

    devices: [{name: gpu0, kind: gpu}, {name: gpu1, kind: gpu}, {name: sw, kind: switch}]
    links: [{src: gpu0, dst: sw, bandwidth: 450GB/s}, {src: gpu1, dst: sw, bandwidth: 450GB/s}]

``pxn: true`` turns on PXN forwarding as ``fabric.pxn`` does for the parametric form: GPUs and NICs
carry ``rail: <index>``, and traffic to another host's GPU on a different rail first crosses
NVLink (edges into a switch named ``nvswitch*``, or ``tier: nvlink``) to the local GPU on that rail.

Semantic checks (capacities > 0, links naming defined devices, every GPU pair reachable) happen
when ``moesim.network.Topology`` builds the graph, and raise ``TopologyError``; this module checks
the shape of the file.

**Faults** (``FaultSpec``): ``{at_s, kind: degrade|fail, target, factor}``, applied by
``moesim.network.faults``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from moesim.config.faults import FaultSpec, parse_faults  # noqa: F401  (re-exported)
from moesim.config.presets import preset_path, read_yaml
from moesim.core import units
from moesim.core.errors import ConfigError

__all__ = ["DeviceSpec", "FabricSpec", "FaultSpec", "HostSpec", "IntraNodeSpec", "LinkSpec", "TopologySpec",
           "fabric_layout", "load_topology", "parse_faults"]

Rate = Annotated[float, BeforeValidator(units.parse_rate)]
"""Bytes/s per direction; positivity is checked by the graph builder (TopologyError)."""
Latency = Annotated[float, BeforeValidator(units.parse_seconds), Field(ge=0)]

_FIELD = "hardware.topology"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IntraNodeSpec(_Frozen):
    """How the GPUs of one host talk to each other: every GPU has one link to a host switch.

    ``nvswitch`` is the NVLink domain (HGX/DGX, NVL72); ``pcie`` is the one-switch shorthand for a
    PCIe-only host (for PCIe switches under CPUs, give ``host`` instead and leave this out)."""

    kind: Literal["nvswitch", "pcie"] = "nvswitch"
    bandwidth: Rate
    """Bytes/s per direction of one GPU's link into the switch (H100 SXM NVLink: 450GB/s)."""
    latency: Latency = 1e-6
    """One-way GPU-to-GPU latency inside a host, seconds (split over the two hops)."""


class HostSpec(_Frozen):
    """The host side of a node: PCIe switches and CPUs (bandwidths per direction).

    * ``link: pcie``: GPU i links to PCIe switch ``node{n}.pcie{i // gpus_per_switch}``
      (``bandwidth``), each switch to its CPU ``node{n}.cpu{c}`` (``uplink_bandwidth``); NIC j sits
      under the PCIe switch of its first GPU (``nic_link_bandwidth``). GPU-to-GPU traffic through
      the host (a PCIe-only node, or after an NVLink fault) crosses these links.
    * ``link: c2c``: every GPU links straight to its CPU (Grace NVLink-C2C); NICs stay on the GPU.

    CPUs of one host are joined pairwise by ``cpu_link_bandwidth`` (UPI / xGMI); without it GPUs
    under different CPUs reach each other only over NVLink or the network.
    """

    link: Literal["pcie", "c2c"] = "pcie"
    bandwidth: Rate
    """Bytes/s per direction of one GPU's link into its PCIe switch (Gen5 x16: 64GB/s) or CPU."""
    latency: Latency = 1e-6
    """One-way GPU → PCIe switch → GPU latency, seconds (each host hop gets half)."""
    gpus_per_switch: int = Field(1, gt=0)
    """``pcie``: GPUs (and the NICs of those GPUs) below one PCIe switch."""
    gpus_per_cpu: int | None = Field(None, gt=0)
    """GPUs below one CPU (socket / Grace); default all GPUs of the host."""
    uplink_bandwidth: Rate | None = None
    """``pcie``: bytes/s per direction of a PCIe switch's link to its CPU (default ``bandwidth``)."""
    nic_link_bandwidth: Rate | None = None
    """``pcie``: bytes/s per direction of a NIC's PCIe link into its switch (default ``bandwidth``)."""
    cpu_link_bandwidth: Rate | None = None
    """Bytes/s per direction between two CPUs of a host (UPI / xGMI); None: CPUs not linked."""
    cpu_link_latency: Latency = 1e-6
    """One-way latency of a CPU-to-CPU hop, seconds."""

    @model_validator(mode="after")
    def _shape(self) -> HostSpec:
        if self.link == "c2c":
            extra = [k for k in ("gpus_per_switch", "uplink_bandwidth", "nic_link_bandwidth")
                     if k in self.model_fields_set]
            if extra:
                raise ValueError(f"host.link=c2c has no PCIe switches; drop {extra}")
        return self


class FabricSpec(_Frozen):
    """How the hosts' NICs are connected (switch ports run at ``link_bandwidth`` per direction).

    * ``none``: no scale-out network (a single host).
    * ``single_switch``: every NIC plugs into one non-blocking switch ``fabric.switch``.
    * ``rail_optimized``: NIC j of every host plugs into rail switch ``rail{j}``; there is no spine,
      so traffic between different rails must first cross NVLink to the GPU on the destination's
      rail (PXN), which is therefore on unless ``pxn: false``.
    * ``leaf_spine``: two tiers, rail-aligned: hosts form groups of ``nodes_per_leaf``; NIC j of
      every host in group s plugs into leaf ``s * nics_per_node + j``; every leaf has
      ``nodes_per_leaf`` down ports and ``nodes_per_leaf * nic_bandwidth / (oversubscription *
      link_bandwidth)`` up ports, one to each spine ``spine{k}``. ``oversubscription: 2.0`` is 2:1.
    * ``fat_tree``: as ``leaf_spine`` with radix-``leaf_radix`` switches; more leaves than the radix
      give three tiers (pods of ``leaf_radix / 2`` leaves with aggregation switches, and cores),
      up to ``leaf_radix`` pods (``moesim.network.generators`` documents the shape).

    ``latency`` is the one-way GPU-to-GPU latency across hosts through one switch (split over the
    four hops GPU→NIC→switch→NIC→GPU); ``hop_latency`` is added for every switch-to-switch hop.
    """

    kind: Literal["rail_optimized", "single_switch", "leaf_spine", "fat_tree", "none"] = "none"
    latency: Latency = 3e-6
    """One-way GPU-to-GPU latency across hosts through one switch, seconds."""
    pxn: bool | None = None
    """Forward traffic for another rail over NVLink to the local GPU on that rail first (NCCL PXN,
    DeepEP). Default: on for ``rail_optimized`` (it has no other path between rails), else off."""
    nodes_per_leaf: int | None = Field(None, gt=0)
    """``leaf_spine`` / ``fat_tree``: hosts below one leaf (its down ports)."""
    leaf_radix: int | None = Field(None, ge=2)
    """``leaf_spine`` / ``fat_tree``: ports per switch (``fat_tree`` default 64); with
    ``oversubscription`` it sets the down / up split when ``nodes_per_leaf`` is not given."""
    oversubscription: float = Field(1.0, gt=0)
    """Leaf down bandwidth / up bandwidth (``2.0`` = 2:1; 1.0 = non-blocking)."""
    link_bandwidth: Rate | None = None
    """Bytes/s per direction of a switch-to-switch link (default: the NIC bandwidth)."""
    hop_latency: Latency = 0.5e-6
    """One-way latency of each switch-to-switch hop (leaf↔spine, leaf↔aggregation, aggregation↔core)."""

    @model_validator(mode="after")
    def _shape(self) -> FabricSpec:
        tiered = self.kind in ("leaf_spine", "fat_tree")
        extra = [k for k in ("nodes_per_leaf", "leaf_radix", "oversubscription", "link_bandwidth", "hop_latency")
                 if k in self.model_fields_set]
        if extra and not tiered:
            raise ValueError(f"fabric.kind={self.kind} takes no {extra} (only leaf_spine and fat_tree do)")
        if self.kind == "leaf_spine" and self.nodes_per_leaf is None and self.leaf_radix is None:
            raise ValueError("fabric.kind=leaf_spine needs nodes_per_leaf (hosts below one leaf) or leaf_radix")
        if self.kind == "rail_optimized" and self.pxn is False:
            raise ValueError("fabric.kind=rail_optimized has no spine, so traffic between rails needs pxn "
                             "(NVLink forwarding); drop pxn: false or use leaf_spine")
        return self

    @property
    def pxn_enabled(self) -> bool:
        """Whether PXN forwarding is on (explicit, or the kind's default)."""
        return self.pxn if self.pxn is not None else self.kind == "rail_optimized"


def fabric_layout(fabric: FabricSpec, nic_bandwidth: float) -> tuple[int, int]:
    """``(leaf_down, leaf_up)`` port counts of a ``leaf_spine`` / ``fat_tree`` leaf.

    ``nodes_per_leaf`` gives the down ports (one per host, rail-aligned), else ``leaf_radix`` is
    split ``radix · o / (1 + o)`` down; the up ports carry ``down · nic_bandwidth /
    (oversubscription · link_bandwidth)``, which must come out a whole number (ValueError)."""
    link = nic_bandwidth if fabric.link_bandwidth is None else fabric.link_bandwidth
    if not (link > 0 and nic_bandwidth > 0):
        raise ValueError(f"fabric.link_bandwidth and nic_bandwidth must be > 0 bytes/s, got {link}, {nic_bandwidth}")
    o = fabric.oversubscription
    if fabric.nodes_per_leaf is not None:
        down = fabric.nodes_per_leaf
    else:
        radix = fabric.leaf_radix or 64
        down = int(round(radix * o / (1.0 + o)))
    up_f = down * nic_bandwidth / (o * link)
    up = int(round(up_f))
    if down < 1 or up < 1 or abs(up - up_f) > 1e-6 * max(1.0, up_f):
        raise ValueError(f"a leaf with {down} down ports of {nic_bandwidth:g} B/s at oversubscription {o:g} "
                         f"needs {up_f:g} up ports of {link:g} B/s; choose nodes_per_leaf / oversubscription / "
                         "link_bandwidth that give a whole number >= 1")
    if fabric.leaf_radix is not None and fabric.nodes_per_leaf is not None and down + up > fabric.leaf_radix:
        raise ValueError(f"nodes_per_leaf={down} plus {up} up ports exceed leaf_radix={fabric.leaf_radix}")
    return down, up


class DeviceSpec(_Frozen):
    """One vertex of an explicit topology."""

    name: str = Field(min_length=1)
    kind: Literal["gpu", "switch", "nic", "cpu"]
    node: int | None = Field(None, ge=0)
    """Host index. GPUs, NICs and CPUs default to host 0; a switch without ``node`` is part of the
    fabric shared by all hosts, a switch with one is inside that host (an NVSwitch, a PCIe switch)."""
    rail: int | None = Field(None, ge=0)
    """Rail (NIC index) of a GPU or NIC, used by PXN forwarding; None: no rail."""


_TIERS = Literal["nvlink", "pcie", "c2c", "host", "nic", "leaf", "core", "fabric"]


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
    tier: _TIERS | None = None
    """Reporting / routing tier; None: inferred (a switch whose name contains ``nvswitch``: nvlink,
    a CPU or a switch whose name contains ``pcie``: pcie, a NIC: nic, else fabric). Routing prefers
    nvlink inside a host."""


_PARAMETRIC_KEYS = ("nodes", "gpus_per_node", "intra_node", "host", "nics_per_node", "nic_bandwidth", "fabric",
                    "node_type")
_NODE_KEYS = ("gpu", "gpus_per_node", "intra_node", "host", "nics_per_node", "nic_bandwidth")
"""Keys a ``node_type`` file supplies."""


def _node_type_keys(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The host keys of node type ``name`` (a preset in ``topologies/`` or a YAML path)."""
    if name in seen:
        raise ConfigError(f"node_type cycle: {' -> '.join(seen + (name,))}", field=f"{_FIELD}.node_type")
    path = Path(name)
    if not path.is_file():
        path = preset_path("topologies", name, field=f"{_FIELD}.node_type")
    tree = read_yaml(path, field=f"{_FIELD}.node_type")
    base = _node_type_keys(tree["node_type"], seen + (name,)) if tree.get("node_type") else {}
    base.update({k: tree[k] for k in _NODE_KEYS if k in tree})
    return base


class TopologySpec(_Frozen):
    """A cluster's GPUs, switches, NICs and links (parametric or explicit form; see module doc)."""

    name: str
    description: str = ""
    source: str = ""
    """Where the bandwidth figures come from."""
    gpu: str = "h100-sxm"
    """GPU preset name (``moesim/presets/gpus``)."""
    # parametric form
    node_type: str | None = None
    """A topology preset or path whose host keys this file starts from (see module doc)."""
    nodes: int | None = Field(None, gt=0)
    """Number of hosts (parametric form)."""
    gpus_per_node: int = Field(8, gt=0)
    intra_node: IntraNodeSpec | None = None
    """The NVLink domain (or one PCIe switch); required when gpus_per_node > 1 unless ``host``."""
    host: HostSpec | None = None
    """PCIe switches and CPUs of the host (optional; see ``HostSpec``)."""
    nics_per_node: int = Field(0, ge=0)
    """Scale-out NICs per host; GPU i uses NIC ``i // (gpus_per_node // nics_per_node)``."""
    nic_bandwidth: Rate | None = None
    """Bytes/s per direction of one NIC (400Gb/s = 5e10)."""
    fabric: FabricSpec = FabricSpec()
    # explicit form
    devices: tuple[DeviceSpec, ...] | None = None
    """Explicit form: every GPU, switch, NIC and CPU. GPUs are numbered 0.. in list order."""
    links: tuple[LinkSpec, ...] | None = None
    pxn: bool = False
    """Explicit form: PXN forwarding (as ``fabric.pxn``): traffic between hosts whose GPUs sit on
    different rails first crosses NVLink to the source host's GPU on the destination's rail. Needs
    ``rail`` on the GPUs (and NICs) it should use."""

    @model_validator(mode="before")
    @classmethod
    def _inherit_node_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("node_type"):
            merged = _node_type_keys(str(data["node_type"]))
            merged.update(data)
            return merged
        return data

    @model_validator(mode="after")
    def _one_form(self) -> TopologySpec:
        explicit = self.devices is not None or self.links is not None
        if explicit:
            clash = [k for k in _PARAMETRIC_KEYS if k in self.model_fields_set]
            if clash:
                raise ValueError(f"give either devices/links or the parametric keys, not both (found {clash})")
            if self.devices is None or self.links is None:
                raise ValueError("the explicit form needs both devices and links")
            if self.pxn and not any(d.kind == "gpu" and d.rail is not None for d in self.devices):
                raise ValueError("pxn: true forwards to the GPU on the destination's rail, but no GPU has a rail; "
                                 "give the GPUs rail: <NIC index> or drop pxn")
            return self
        if "pxn" in self.model_fields_set:
            raise ValueError("pxn is the explicit form's key; in the parametric form use fabric.pxn")
        if self.nodes is None:
            raise ValueError("give either nodes (parametric form) or devices and links (explicit form)")
        g, intra, host, fabric = self.gpus_per_node, self.intra_node, self.host, self.fabric
        if g > 1 and intra is None and host is None:
            raise ValueError(f"gpus_per_node={g} needs intra_node (kind, bandwidth) or host (PCIe switches)")
        if intra is not None and intra.kind == "pcie" and host is not None:
            raise ValueError("intra_node.kind=pcie is the one-switch shorthand; with host, leave intra_node out")
        if host is not None:
            per_cpu = host.gpus_per_cpu or g
            if g % per_cpu:
                raise ValueError(f"gpus_per_node={g} must be a multiple of host.gpus_per_cpu={per_cpu}")
            if host.link == "pcie" and per_cpu % host.gpus_per_switch:
                raise ValueError(f"host.gpus_per_cpu={per_cpu} must be a multiple of "
                                 f"host.gpus_per_switch={host.gpus_per_switch}")
        if self.nics_per_node:
            if self.nic_bandwidth is None:
                raise ValueError(f"nics_per_node={self.nics_per_node} needs nic_bandwidth")
            if g % self.nics_per_node:
                raise ValueError(f"gpus_per_node={g} must be a multiple of nics_per_node={self.nics_per_node}")
        elif fabric.kind != "none":
            raise ValueError(f"fabric.kind={fabric.kind} needs nics_per_node > 0")
        if fabric.pxn_enabled and g > 1 and (intra is None or intra.kind != "nvswitch"):
            if fabric.pxn is None:  # the rail_optimized default
                raise ValueError("fabric.kind=rail_optimized has no spine and forwards traffic between rails over "
                                 "NVLink (PXN), which needs intra_node.kind=nvswitch; for PCIe-only hosts use "
                                 "single_switch or leaf_spine")
            raise ValueError("fabric.pxn forwards over NVLink; it needs intra_node.kind=nvswitch")
        if fabric.kind in ("leaf_spine", "fat_tree") and self.nic_bandwidth:
            fabric_layout(fabric, self.nic_bandwidth)  # ValueError when the ports do not add up
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
