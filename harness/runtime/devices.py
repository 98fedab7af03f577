"""Which devices JAX uses, set before its backend starts: fake CPU devices, fast CPU
compiles, the persistent compilation cache. Benchmarks call it too, so they measure
what users run."""

from __future__ import annotations

import os

# For fake CPU devices: LLVM's expensive passes buy the mock model nothing. Measured
# (8 devices, 2 cores): init + step compile ~4.2 s instead of ~5.4 s, same step time;
# level 0 compiles no faster and steps ~50% slower. bench/process_cost.py compares.
CPU_FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=1", "--xla_llvm_disable_expensive_passes=true")


def configure_devices(*, cpu_devices: int, cpu_fast_compile: bool = True, compilation_cache_dir: str = "") -> None:
    """`cpu_devices` > 0: run on that many fake CPU devices (and never probe for a TPU,
    which libtpu, when installed, would otherwise try); 0: JAX picks the platform."""
    if cpu_devices > 0 and cpu_fast_compile:
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *CPU_FAST_COMPILE_FLAGS]).strip()

    import jax

    if cpu_devices > 0:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    if compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
