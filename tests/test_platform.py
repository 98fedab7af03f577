"""`--platform`: quiet CPU where there is no TPU, and never a silent fall back from one.

    .venv/bin/python -m pytest -q tests/test_platform.py

The forced-TPU exit (3, one line) is in tests/test_exit_codes.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.runtime.devices import processes_holding, resolve_platform, tpu_device_files
from tests.support.runs import harness_env, run_harness

RUN_TIMEOUT_S = 240


def test_auto_without_tpu_device_files_runs_on_the_cpu_without_loading_libtpu(tmp_path: Path) -> None:
    """No CPU preset and no JAX_PLATFORMS, as a user types it on a machine where libtpu is
    installed: libtpu used to load, print its start-up errors, and JAX fell back to one CPU."""
    assert not tpu_device_files()
    env = harness_env()
    del env["JAX_PLATFORMS"]
    result = run_harness(["--num_train_steps", "2", "--no_wandb", "--no_hard_examples", "--batch_size", "4",
                          "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_dir", str(tmp_path / "run")],
                         timeout=RUN_TIMEOUT_S, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "  Processes: 1 x 1 cpu devices" in result.stdout.splitlines()
    assert "tpu" not in result.stderr.lower(), result.stderr


def test_auto_follows_jax_platforms_when_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAX_PLATFORMS", "")
    assert resolve_platform("auto", cpu_devices=8) == "env"
    monkeypatch.delenv("JAX_PLATFORMS")
    assert resolve_platform("auto", cpu_devices=0) == "cpu"  # this machine has no TPU device files
    assert resolve_platform("tpu", cpu_devices=8) == "tpu"
    assert resolve_platform("cpu", cpu_devices=0) == "cpu"


def test_the_process_holding_a_device_file_is_named(tmp_path: Path) -> None:
    """What a TPU held by a stale process looks like from outside: another process with
    the device file open."""
    device = tmp_path / "accel0"
    device.write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(device)!r}); print('open', flush=True); "
                               "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        holders = processes_holding([str(device)])
        assert list(holders) == [holder.pid]
        assert holders[holder.pid].startswith(sys.executable)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert processes_holding([str(device)]) == {}  # reaped: nobody holds it now
