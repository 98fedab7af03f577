"""Test-wide setup: 8 fake CPU devices for the pytest process, set before JAX loads.

Tests that need another device count, or several processes, start subprocesses
(`tests/support/runs.py`); every such wait has a timeout.
"""

import os

import pytest

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    flag for flag in os.environ.get("XLA_FLAGS", "").split()
    if not flag.startswith("--xla_force_host_platform_device_count")
) + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("WANDB_MODE", "disabled")

from tests.support.runs import compile_cache_flags  # noqa: E402 (after the environment is set)


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`--compilation_cache_dir` for every harness run of the session: runs of the same
    config compile their init and step once, and no test shares the presets' cache in /tmp."""
    return compile_cache_flags(tmp_path_factory.getbasetemp() / "jax_compile_cache")
