"""Preflight's rendezvous against faults made in the world, not fed to it by
`--testing_fault`: a host that never starts, a coordinator that never starts. (Changed
code, slow hosts, junk at the roll call and slow or unwritable storage have their own
outside-fault tests beside this file.)

    .venv/bin/python -m pytest -q tests/test_preflight_outside_faults.py

Each host is started by hand, as `launch.local` would (its `host_environment`), so a test
can leave one out or start it differently; every wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.local import free_port, host_environment
from tests.support.runs import compile_cache_flags, harness_env

HOST_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outside-faults-cache")


def _start_hosts(tmp_path: Path, cache: Path, devices: dict[int, int], *args: str,
                 num_processes: int = 2) -> dict[int, subprocess.Popen[str]]:
    """Starts the hosts named in `devices` (host -> its fake CPU device count) of a
    `num_processes` pod; the ones left out never start."""
    address, run_id = f"127.0.0.1:{free_port()}", f"test-{tmp_path.name}"
    command = [sys.executable, "-m", "harness.preflight", "--config", "local-2x4", "--run_dir", str(tmp_path / "run"),
               "--checkpoint_dir", str(tmp_path / "ckpt"), *compile_cache_flags(cache), *args]
    return {
        host: subprocess.Popen(command, env=host_environment(harness_env(), coordinator_address=address,
                                                             num_processes=num_processes, process_id=host,
                                                             devices_per_process=count, run_id=run_id),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for host, count in devices.items()
    }


def _finish(hosts: dict[int, subprocess.Popen[str]]) -> dict[int, tuple[int, str]]:
    """Every host's exit code and output; a host still running after the bound fails the test."""
    results = {}
    try:
        for host, process in hosts.items():
            try:
                output, _ = process.communicate(timeout=HOST_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"host {host} still running after {HOST_TIMEOUT_S} s")
            results[host] = (process.returncode, output)
    finally:
        for process in hosts.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    return results


def test_a_host_that_was_never_started_is_named(tmp_path: Path, compile_cache: Path) -> None:
    results = _finish(_start_hosts(tmp_path, compile_cache, {0: 4}, "--checks", "consistency",
                                   "--initialization_timeout", "5"))
    returncode, output = results[0]
    assert returncode == 1, output[-3000:]
    report = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert report["verdict"] == "FAIL"
    [failure] = [f for f in report["failures"] if f["check"] == "rendezvous"]
    assert failure["host"] == 1 and "never reached the coordinator" in failure["detail"], report["failures"]


def test_a_coordinator_that_was_never_started_is_named_by_the_others(tmp_path: Path, compile_cache: Path) -> None:
    results = _finish(_start_hosts(tmp_path, compile_cache, {1: 4}, "--checks", "consistency",
                                   "--initialization_timeout", "5"))
    returncode, output = results[1]
    assert returncode == 1, output[-3000:]
    assert "harness-preflight: FAIL: host 0: rendezvous: unreachable from host 1" in output.splitlines(), output
    assert not (tmp_path / "run" / "preflight.json").exists()  # process 0 writes the report

