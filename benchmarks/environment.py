"""The machine and the library versions a benchmark report names (both reports: single-process and multi-host)."""

from __future__ import annotations

import os
import platform
import re
import subprocess


def read_text(path: str) -> str:
    """The text of the file at ``path``, or an empty string if it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine() -> dict[str, str]:
    """Cores, CPU model, RAM, the disk under /tmp, kernel and Python of this machine."""
    mem = re.search(r"MemTotal:\s+(\d+)", read_text("/proc/meminfo"))
    cpu = re.search(r"model name\s*:\s*(.+)", read_text("/proc/cpuinfo"))
    disk = "?"
    try:
        src = subprocess.run(["df", "--output=source,fstype", "/tmp"], capture_output=True, text=True, timeout=5).stdout.split("\n")[1].split()
        dev = os.path.basename(src[0])
        rot = read_text(f"/sys/block/{re.sub(r'[0-9]+$', '', dev)}/queue/rotational").strip()
        kind = f"sysfs rotational={rot or '?'}"
        disk = f"{src[0]} ({src[1]}, {kind})"
    except Exception:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "ram": f"{int(mem.group(1)) / 2**20:.1f} GiB" if mem else "?",
        "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "disk": disk,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


VERSIONED = ["cloudckpt", "numpy", "zarr", "fsspec", "s3fs", "gcsfs", "crc32c", "moto", "torch", "safetensors",
             "jax", "jaxlib", "orbax-checkpoint", "tensorstore", "torchsnapshot"]


def versions() -> dict[str, str]:
    """The installed version of every package in ``VERSIONED`` ("not installed" if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
