"""A host lost mid-run: killed (SIGKILL) or frozen (SIGSTOP). The survivor names the
missing host before JAX's own heartbeat abort, the launcher names the same host, and
nothing is left running. Also the watchdog itself (fake key-value stores) and its rule
for JAX's heartbeat timeout (the private JAX API it uses: tests/test_private_apis.py).

    .venv/bin/python -m pytest -q tests/test_host_loss.py            # default cases
    .venv/bin/python -m pytest -q -m soak tests/test_host_loss.py    # 10 frozen pods, frozen coordinator

Every wait is bounded; whatever a failing test leaves is SIGKILLed by process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from functools import partial
from pathlib import Path

import pytest

from harness.runtime import distributed
from harness.runtime.watchdog import (
    DONE, EXIT_HOST_LOST, FAILED, KEY_PREFIX, REACTION_MARGIN_S, SILENCE_FRACTION, HostWatchdog, jax_heartbeat_timeout,
    lost_hosts_line,
)
from launch.failures import parse_lost_hosts_line
from tests.support.argv import pod_command
from tests.support.coordination import ExitRecorder, FakeKeyValueStore
from tests.support.runs import (
    harness_env, local_pod_hosts, processes_in_groups, start_local_pod, stop_local_pod, wait_for_output,
)

RUN_TIMEOUT_S = 240
HEARTBEAT_S = 10
# A hang guard, not a measurement: JAX's own abort (22 s for HEARTBEAT_S) plus the
# launcher's grace and generous slack for two busy cores.
POD_ENDS_WITHIN_S = 180
FIRST_STEP = r"^\[host 0\] Step +\d+:"
SOAK_RUNS = 10
VERDICT_WAIT_S = 30  # fake-store tests: bound on waiting for the watchdog's verdict


# --- The watchdog against fake key-value stores (threads, no JAX processes).

def _watchdog(store: FakeKeyValueStore, verdict: ExitRecorder, host: int, hosts: int = 2) -> HostWatchdog:
    return HostWatchdog(0.5, exit_fn=verdict, beat_s=0.05, client=store, host=host, hosts=hosts)


def test_a_host_whose_beats_stop_is_named_in_a_line_the_launchers_parse(capsys):
    store, verdict = FakeKeyValueStore(), ExitRecorder()
    store.values[f"{KEY_PREFIX}1"] = "1"  # host 1 beat once, then froze
    dog = _watchdog(store, verdict, host=0, hosts=3).start()
    try:
        store.values[f"{KEY_PREFIX}2"] = "1"
        beats = 1
        while not verdict.given.wait(0.05):  # host 2 keeps beating
            beats += 1
            store.values[f"{KEY_PREFIX}2"] = str(beats)
            assert beats < VERDICT_WAIT_S / 0.05, "the watchdog never named host 1"
    finally:
        dog.stop()
    assert verdict.codes == [EXIT_HOST_LOST]
    [line] = capsys.readouterr().err.splitlines()
    assert line == lost_hosts_line(0, [1], "no heartbeat for 0.5 s")
    assert parse_lost_hosts_line(line) == (0, (1,))


def test_the_coordinator_that_stops_answering_is_named_as_host_0(capsys):
    store, verdict = FakeKeyValueStore(), ExitRecorder()
    dog = _watchdog(store, verdict, host=1).start()
    try:
        store.answering.clear()  # every call now blocks, as against a frozen coordinator
        assert verdict.given.wait(VERDICT_WAIT_S), "the watchdog never named the coordinator"
    finally:
        store.answering.set()
        dog.stop()
    assert verdict.codes == [EXIT_HOST_LOST]
    assert parse_lost_hosts_line(capsys.readouterr().err) == (1, (0,))


def test_a_host_that_is_done_is_never_named_and_stop_says_done():
    store, verdict = FakeKeyValueStore(), ExitRecorder()
    store.values[f"{KEY_PREFIX}1"] = DONE
    dog = _watchdog(store, verdict, host=0).start()
    assert not verdict.given.wait(4 * dog.silence_s)
    dog.stop()
    assert verdict.codes == []
    assert store.values[f"{KEY_PREFIX}0"] == DONE


def test_a_host_that_stops_on_an_error_stops_the_others_at_once(capsys):
    store, verdict = FakeKeyValueStore(), ExitRecorder()
    failing = _watchdog(store, ExitRecorder(), host=1).start()
    watching = _watchdog(store, verdict, host=0).start()
    try:
        failing.stop(FAILED + "ValueError: PERMISSION_DENIED writing step 4")
        # Named well before a silent host would be (silence_s), since it said why it left.
        assert verdict.given.wait(VERDICT_WAIT_S), "the watchdog never named the failed host"
    finally:
        watching.stop()
    assert verdict.codes == [EXIT_HOST_LOST]
    assert capsys.readouterr().err.splitlines() == [
        "harness-train: error: host 0: host 1 stopped on an error "
        "(ValueError: PERMISSION_DENIED writing step 4); exiting"
    ]


def test_parse_lost_hosts_line_takes_only_the_watchdogs_line():
    line = lost_hosts_line(2, [0, 3], "the coordinator stopped answering for 6 s (TimeoutError: x: y)")
    assert parse_lost_hosts_line(line + "\r\n") == (2, (0, 3))
    assert parse_lost_hosts_line("Step 10: loss=1.0") is None
    assert parse_lost_hosts_line("harness-train: error: host 0: a collective failed while every host "
                                 "still answers: Gloo AllGather failed") is None


# --- JAX's heartbeat timeout (the private API the watchdog uses: tests/test_private_apis.py).

@pytest.mark.parametrize("heartbeat_timeout", [1, 10, 60, 300])
def test_jax_aborts_no_earlier_than_the_watchdogs_threshold_plus_the_margin(monkeypatch, heartbeat_timeout):
    """JAX heartbeats every T/2 and declares a process dead after T without one, so it
    can abort T/2 after a freeze (harness/runtime/watchdog.py); the T the harness passes
    keeps that REACTION_MARGIN_S after the watchdog's threshold."""
    given = {}
    monkeypatch.setattr(distributed, "_initialize_hearing_sigterm", lambda **kwargs: given.update(kwargs))
    distributed.initialize("auto", coordinator_address="127.0.0.1:1", num_processes=2, process_id=1,
                           heartbeat_timeout=heartbeat_timeout)
    silence_s = SILENCE_FRACTION * heartbeat_timeout
    assert given["heartbeat_timeout_seconds"] == jax_heartbeat_timeout(silence_s)
    assert given["heartbeat_timeout_seconds"] / 2 >= silence_s + REACTION_MARGIN_S


# --- Real pods: 2 local processes x 4 devices, one of them lost.


# A run far longer than the test, without periodic checkpoints.
_pod_command = partial(pod_command, num_train_steps=3000, save_interval=100000, log_interval=1,
                       heartbeat_timeout=HEARTBEAT_S, no_hard_examples=True)


def _lose_host(root: Path, cache: list[str], victim: int, how: signal.Signals, *, kill_grace: float):
    """Runs the pod, sends `how` to host `victim` after host 0's first step and waits for
    the launcher. Returns its exit status, its combined output and the processes of the
    pod still alive after it exited."""
    log = root / "launcher.log"
    launcher = start_local_pod(2, 4, _pod_command(root, cache), log_path=log, timeout=RUN_TIMEOUT_S,
                               kill_grace=kill_grace, env=harness_env())
    hosts = {}
    try:
        wait_for_output(log, FIRST_STEP, launcher, timeout=RUN_TIMEOUT_S)
        hosts = local_pod_hosts(launcher.pid)
        assert sorted(hosts) == [0, 1], hosts
        os.kill(hosts[victim].pid, how)
        try:
            returncode = launcher.wait(timeout=POD_ENDS_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pod still running {POD_ENDS_WITHIN_S}s after {how.name} to host {victim}:\n"
                        f"{log.read_text(errors='replace')[-4000:]}")
        # Each host led its own process group: whatever is still in one is left over.
        left = processes_in_groups({host.pid for host in hosts.values()})
    finally:
        stop_local_pod(launcher, hosts)
    return returncode, log.read_text(errors="replace"), left


def _host_tail(output: str, host: int, lines: int = 25) -> str:
    prefix = f"[host {host}] "
    mine = [line for line in output.splitlines() if line.startswith(prefix) and "] Step " not in line]
    return "\n".join(mine[-lines:])


def _assert_named_by_the_survivor(output: str, survivor: int, lost: int) -> None:
    reports = [parse_lost_hosts_line(line) for line in output.splitlines() if line.startswith(f"[host {survivor}] ")]
    assert (survivor, (lost,)) in reports, (
        f"host {survivor} never named host {lost}; its last lines:\n{_host_tail(output, survivor)}")


def _assert_frozen_host_named(returncode: int, output: str, left: list[int], *, frozen: int) -> None:
    survivor = 1 - frozen
    _assert_named_by_the_survivor(output, survivor, frozen)
    launcher_lines = re.findall(r"^launch\.local: .*$", output, re.MULTILINE)
    assert launcher_lines[:1] == [f"launch.local: host {frozen} stopped responding (named by host {survivor}); "
                                  f"host {survivor} failed (exit code {EXIT_HOST_LOST})"], output[-4000:]
    assert returncode == EXIT_HOST_LOST, output[-4000:]
    assert "SIGABRT" not in output, output[-4000:]  # JAX's own abort never came first
    assert left == [], f"processes of the pod still alive after the launcher exited: {left}"


def test_killed_host_is_named_by_the_launcher_and_by_the_survivor(tmp_path, cache):
    # A long grace, so the launcher does not kill host 0 before it can report.
    returncode, output, left = _lose_host(tmp_path, cache, 1, signal.SIGKILL, kill_grace=40)

    failures = re.findall(r"^launch\.local: (host \d+) failed \((.*)\)$", output, re.MULTILINE)
    assert failures[:1] == [("host 1", "killed by SIGKILL")], output[-4000:]
    assert returncode == 128 + signal.SIGKILL, output[-4000:]
    _assert_named_by_the_survivor(output, 0, 1)
    assert left == [], f"processes of the pod still alive after the launcher exited: {left}"


def test_frozen_host_is_named_by_the_survivor_and_by_the_launcher(tmp_path, cache):
    returncode, output, left = _lose_host(tmp_path, cache, 1, signal.SIGSTOP, kill_grace=5)
    _assert_frozen_host_named(returncode, output, left, frozen=1)


@pytest.mark.soak
@pytest.mark.parametrize("run", range(SOAK_RUNS))
def test_frozen_host_is_named_in_every_run(tmp_path, cache, run):
    returncode, output, left = _lose_host(tmp_path, cache, 1, signal.SIGSTOP, kill_grace=5)
    _assert_frozen_host_named(returncode, output, left, frozen=1)


@pytest.mark.soak
def test_frozen_coordinator_is_named_by_the_other_host(tmp_path, cache):
    returncode, output, left = _lose_host(tmp_path, cache, 0, signal.SIGSTOP, kill_grace=5)
    _assert_frozen_host_named(returncode, output, left, frozen=0)
