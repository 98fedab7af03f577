"""How much host memory is there to use: the kernel's estimate of what can be allocated
without swapping, capped by the cgroup limit a container or job scheduler sets; and a
size written for people (every command's one way)."""

from __future__ import annotations

import os
from pathlib import Path


def available_host_bytes() -> int | None:
    """Bytes this process can still allocate, or None where the platform doesn't say."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            candidates.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return min(candidates)


def format_bytes(value: float | None) -> str:
    """Binary sizes for people, two decimals ("15.75 GiB": the TPU compiler's "G" is a
    GiB); None, a size not known, is "-"."""
    if value is None:
        return "-"
    for scale, unit in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"
