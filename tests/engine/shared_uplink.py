"""A tiny topology whose two 2-GPU replicas share one uplink (for contention tests)."""

from __future__ import annotations

from pathlib import Path

# Two leaves of two GPUs joined by one 25 GB/s uplink pair: replica 0 = (gpu0, gpu1) and
# replica 1 = (gpu2, gpu3) each span both leaves, so all their traffic shares the uplink.
TOPOLOGY = """
name: two-leaf-shared-uplink
gpu: h100-sxm
devices:
  - {name: gpu0, kind: gpu, node: 0}
  - {name: gpu1, kind: gpu, node: 1}
  - {name: gpu2, kind: gpu, node: 0}
  - {name: gpu3, kind: gpu, node: 1}
  - {name: leaf0, kind: switch, node: 0}
  - {name: leaf1, kind: switch, node: 1}
links:
  - {src: gpu0, dst: leaf0, bandwidth: 50GB/s, latency: 1us}
  - {src: gpu2, dst: leaf0, bandwidth: 50GB/s, latency: 1us}
  - {src: gpu1, dst: leaf1, bandwidth: 50GB/s, latency: 1us}
  - {src: gpu3, dst: leaf1, bandwidth: 50GB/s, latency: 1us}
  - {src: leaf0, dst: leaf1, bandwidth: 25GB/s, latency: 2us}
"""


def shared_uplink_sets(folder: Path, replicas: int, model: str = "flow") -> list[str]:
    """``--set`` overrides that put ``replicas`` 2-GPU replicas (TP2, EP2) on the topology."""
    topo = folder / "shared.yaml"
    topo.write_text(TOPOLOGY)
    return [f"hardware.topology={topo}", f"hardware.network.model={model}", f"deployment.replicas={replicas}",
            "deployment.gpus_per_replica=2", "deployment.attention_tp=2", "deployment.ep=2", "router.kind=round_robin"]
