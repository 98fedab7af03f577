"""A host lost mid-run on a 2x4 local pod: killed (SIGKILL) or frozen (SIGSTOP). The pod
must end within the heartbeat timeout plus a margin, the launcher must say which host
failed, the survivor should name the missing host, and nothing may be left running.

    .venv/bin/python -m pytest -q tests/test_host_loss.py

Every wait is bounded; whatever a failing test leaves is SIGKILLed by process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.runs import (
    compile_cache_flags, harness_env, local_pod_hosts, start_local_pod, stop_local_pod, wait_for_output,
)

RUN_TIMEOUT_S = 240
HEARTBEAT_S = 10
# From the loss to the launcher's exit: the heartbeat timeout, the launcher's grace for
# the survivor, and slack for two busy cores.
POD_ENDS_WITHIN_S = 60
FIRST_STEP = r"^\[host 0\] Step +\d+:"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> list[str]:
    """One compilation cache for the session's runs: same config, same compiled step."""
    return compile_cache_flags(tmp_path_factory.getbasetemp() / "jax_compile_cache")


def _pod_command(root: Path, cache: list[str]) -> list[str]:
    """A run far longer than the test, without periodic checkpoints."""
    return [sys.executable, "-m", "harness.train", "--config", "local-2x4", "--num_train_steps", "3000",
            "--save_interval", "100000", "--log_interval", "1", "--heartbeat_timeout", str(HEARTBEAT_S),
            "--no_wandb", "--no_hard_examples", *cache,
            "--checkpoint_dir", str(root / "ckpt"), "--run_dir", str(root / "run")]


def _lose_host_1(root: Path, cache: list[str], how: signal.Signals, *, kill_grace: float):
    """Runs the pod, sends `how` to host 1 after host 0's first step and waits for the
    launcher. Returns its exit status, the seconds it took after the signal, the
    combined output and the hosts still alive after it exited."""
    log = root / "launcher.log"
    launcher = start_local_pod(2, 4, _pod_command(root, cache), log_path=log, timeout=RUN_TIMEOUT_S,
                               kill_grace=kill_grace, env=harness_env())
    hosts = {}
    try:
        wait_for_output(log, FIRST_STEP, launcher, timeout=RUN_TIMEOUT_S)
        hosts = local_pod_hosts(launcher.pid)
        assert sorted(hosts) == [0, 1], hosts
        os.kill(hosts[1].pid, how)
        lost_at = time.monotonic()
        try:
            returncode = launcher.wait(timeout=POD_ENDS_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pod still running {POD_ENDS_WITHIN_S}s after {how.name} to host 1:\n"
                        f"{log.read_text(errors='replace')[-4000:]}")
        took_s = time.monotonic() - lost_at
        left = [host_id for host_id, host in hosts.items() if host.same_process()]
    finally:
        stop_local_pod(launcher, hosts)
    return returncode, took_s, log.read_text(errors="replace"), left


def _launcher_failures(output: str) -> list[tuple[str, str]]:
    return re.findall(r"^launch\.local: (host \d+) failed \((.*)\)$", output, re.MULTILINE)


def _host_tail(output: str, host: int, lines: int = 25) -> str:
    prefix = f"[host {host}] "
    mine = [line for line in output.splitlines() if line.startswith(prefix) and "] Step " not in line]
    return "\n".join(mine[-lines:])


def test_killed_host_is_named_by_the_launcher_and_by_the_survivor(tmp_path, cache):
    # A long grace, so the launcher does not kill host 0 before it can report.
    returncode, took_s, output, left = _lose_host_1(tmp_path, cache, signal.SIGKILL, kill_grace=40)

    assert returncode == 128 + signal.SIGKILL, output[-4000:]
    assert _launcher_failures(output)[:1] == [("host 1", "killed by SIGKILL")], output[-4000:]
    assert took_s < POD_ENDS_WITHIN_S
    assert left == [], f"hosts still alive after the launcher exited: {left}"
    # The survivor's own word: one line naming host 1, then exit 3 (or the launcher's
    # SIGKILL once the grace is over).
    report = re.search(r"^\[host 0\] harness-train: error: host 0: host\(s\) 1 stopped responding: .+$",
                       output, re.MULTILINE)
    assert report, f"host 0 never named host 1; host 0's last lines:\n{_host_tail(output, 0)}"


def test_frozen_host_ends_the_pod_within_the_heartbeat_timeout(tmp_path, cache):
    returncode, took_s, output, left = _lose_host_1(tmp_path, cache, signal.SIGSTOP, kill_grace=5)

    assert returncode != 0, output[-4000:]
    assert _launcher_failures(output), f"the launcher reported no failure:\n{output[-4000:]}"
    assert took_s < HEARTBEAT_S + 50
    assert left == [], f"hosts still alive after the launcher exited: {left}"
