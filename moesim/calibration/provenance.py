"""Provenance of a measured profile: device, software versions, clocks, when and how it was run."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import moesim

__all__ = ["provenance"]


def _nvidia_smi() -> dict[str, Any]:
    query = "clocks.sm,clocks.max.sm,clocks.mem,driver_version,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    parts = [p.strip() for p in out.split(",")]
    if len(parts) < 5:
        return {}
    num = lambda s: float(s) if s.replace(".", "", 1).isdigit() else None  # noqa: E731
    return {"clocks": {"sm_mhz": num(parts[0]), "sm_max_mhz": num(parts[1]), "mem_mhz": num(parts[2])},
            "driver": parts[3], "power_limit_w": num(parts[4])}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(torch: Any, device: str, command: str) -> dict[str, Any]:
    """Where and how a profile was measured."""
    p: dict[str, Any] = {
        "device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "moesim": moesim.__version__,
        "python": platform.python_version(), "numpy": np.__version__, "source": "measured",
        "gpu_name": None, "sm_count": None, "clocks": None, "driver": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        p.update({"gpu_name": props.name, "sm_count": props.multi_processor_count,
                  "memory_bytes": int(props.total_memory), "capability": f"{props.major}.{props.minor}",
                  "gpus_visible": torch.cuda.device_count()})
        p.update(_nvidia_smi())
    else:
        p.update({"gpu_name": f"cpu: {_cpu_name()}", "threads": torch.get_num_threads(), "cores": os.cpu_count()})
    return p

