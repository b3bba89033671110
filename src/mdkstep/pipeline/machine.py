"""The machine a measurement ran on, and one thread count for every method."""
from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from mdkstep.baselines.pool import limit_threads


def set_threads(n: int) -> None:
    """The same thread count for every method: torch, OpenMP (xTB) and OpenMM's CPU platform."""
    torch.set_num_threads(n)
    limit_threads(n)
    os.environ["OPENMM_CPU_THREADS"] = str(n)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, GPU (if any) and library versions, for the report."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20)
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for pkg in ("numpy", "torch", "openmm", "tblite", "ase", "rdkit", "openff-toolkit"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "gpu": gpu, "system": platform.platform(),
            "versions": versions}
