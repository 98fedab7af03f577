"""Which devices JAX uses, set before its backend starts, and checked once it has.

`--platform` (the `devices` group):
- `auto` (default): JAX's own `JAX_PLATFORMS` when the environment sets it (even to "",
  JAX's "choose for me"); otherwise TPU when this host has TPU device files
  (`/dev/accel*`, `/dev/vfio/*`), else CPU. On a machine without a TPU that means
  libtpu is never loaded: no start-up noise on stderr, no probe.
- `cpu`, `tpu`: forced.

A host that should have a TPU and does not get one (held by a stale process, driver
missing) stops with one line saying why (`TpuUnavailableError`, exit 3), never a silent
fall back to hours of training on the CPU.

Also here: fake CPU devices, fast CPU compiles and the persistent compilation cache.
Benchmarks call `configure_devices` too, so they measure what users run.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from harness.errors import TpuUnavailableError, first_line

PLATFORMS = ("auto", "cpu", "tpu")
TPU_DEVICE_PATTERNS = ("/dev/accel*", "/dev/vfio/[0-9]*")
# For fake CPU devices: LLVM's expensive passes buy the mock model nothing. Measured
# (8 devices, 2 cores): init + step compile ~4.2 s instead of ~5.4 s, same step time;
# level 0 compiles no faster and steps ~50% slower. bench/process_cost.py compares.
CPU_FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=1", "--xla_llvm_disable_expensive_passes=true")


def tpu_device_files(patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> list[str]:
    return sorted(path for pattern in patterns for path in glob.glob(pattern))


def resolve_platform(platform: str, *, cpu_devices: int) -> str:
    """`cpu`, `tpu`, or `env` (JAX reads `JAX_PLATFORMS` itself)."""
    if platform != "auto":
        return platform
    if "JAX_PLATFORMS" in os.environ:
        return "env"
    if cpu_devices > 0 or not tpu_device_files():
        return "cpu"
    return "tpu"


def configure_devices(*, platform: str = "auto", cpu_devices: int, cpu_fast_compile: bool = True,
                      compilation_cache_dir: str = "") -> str:
    """Sets JAX's platform before its backend starts; returns the resolved choice for
    `check_platform`. `cpu_devices` > 0: that many (fake) CPU devices."""
    resolved = resolve_platform(platform, cpu_devices=cpu_devices)
    if cpu_devices > 0 and cpu_fast_compile:
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *CPU_FAST_COMPILE_FLAGS]).strip()

    import jax

    if resolved in ("cpu", "tpu"):
        jax.config.update("jax_platforms", resolved)
    if cpu_devices > 0:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    if compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return resolved


def check_platform(resolved: str) -> None:
    """Starts JAX's backend; a TPU that was asked for and did not come up raises
    `TpuUnavailableError` with one line: JAX's reason and who holds the device files."""
    import jax

    try:
        backend = jax.default_backend()
    except RuntimeError as err:
        if resolved != "tpu":
            raise
        raise TpuUnavailableError(f"the TPU did not initialise: {first_line(err)}; {_device_files_state()}") from None
    if resolved == "tpu" and backend != "tpu":
        raise TpuUnavailableError(f"asked for the TPU but JAX chose {backend}; {_device_files_state()}")


def _device_files_state() -> str:
    files = tpu_device_files()
    if not files:
        return f"this host has no TPU device files ({', '.join(TPU_DEVICE_PATTERNS)})"
    holders = processes_holding(files)
    if not holders:
        return f"{', '.join(files)} exist and no other process holds them (driver or libtpu problem?)"
    named = ", ".join(f"pid {pid} ({command})" for pid, command in sorted(holders.items()))
    return f"{', '.join(files)} held by {named}: stop it (e.g. kill {min(holders)}) and retry"


def processes_holding(paths: Sequence[str], proc: str = "/proc") -> dict[int, str]:
    """Other processes with one of `paths` open, read from /proc/<pid>/fd, with their command lines."""
    wanted = {os.path.realpath(path) for path in paths}
    holders: dict[int, str] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            targets = {os.readlink(fd.path) for fd in os.scandir(os.path.join(entry.path, "fd"))}
            if targets & wanted:
                with open(os.path.join(entry.path, "cmdline"), "rb") as cmdline:
                    holders[int(entry.name)] = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
        except OSError:  # gone, or not ours to read
            continue
    return holders

