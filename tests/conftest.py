"""Test-wide setup: 8 fake CPU devices for the pytest process, set before JAX loads.

Tests that need another device count, or several processes, start subprocesses
(`tests/support/runs.py`); every such wait has a timeout.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    flag for flag in os.environ.get("XLA_FLAGS", "").split()
    if not flag.startswith("--xla_force_host_platform_device_count")
) + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("WANDB_MODE", "disabled")
