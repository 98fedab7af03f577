"""Preemption through the real CLI: SIGTERM makes every host stop at one agreed step,
save a checkpoint there and exit 42 (restartable: harness/errors.py); `--resume` then
continues bit for bit. The launcher counts 42 after its own stop request as a clean stop.

    .venv/bin/python -m pytest -q tests/test_preemption.py
    .venv/bin/python -m pytest -q -m soak tests/test_preemption.py   # SIGTERM to one host only

Each run trains far longer (4000 steps, no periodic checkpoint) than it gets to, so the
only checkpoint is the preemption one. Every wait is bounded: a run that ignores the
signal fails a test instead of stalling the suite.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from functools import partial
from pathlib import Path

import pytest

from harness.errors import EXIT_RESTARTABLE
from harness.runtime.checkpoint import existing_steps
from harness.outputs.sinks import read_metrics
from tests.support.argv import pod_command, train_args
from tests.support.process_states import PROCESS_STATES, TPU_VM, libtpu_loaded, state_env
from tests.support.runs import (
    failure_report, harness_env, launch_local, local_pod_hosts, run_harness, start_harness, start_local_pod, stop_local_pod, uninterrupted_rows, wait_for_output,
)
from tests.support.slow_host import braking

RUN_TIMEOUT_S = 240
# A preempted host gets this long to save and exit (TPU VMs get ~30 s; 2 busy cores are slower).
STOP_WITHIN_S = 90
LONG_RUN = ["--num_train_steps", "4000", "--save_interval", "10000"]
# A host frozen 0.4 s of every 0.5 s: its beats still move (every ~1 s), its save is slow.
SLOW_SAVE = {"stopped_s": 0.4, "running_s": 0.1}
PREEMPTED = r"Preempted \(SIGTERM\): all hosts stopped at step (\d+) and saved a checkpoint there"


_single_args = partial(train_args, log_interval=1)
_pod_command = partial(pod_command, log_interval=1)


# ---------------------------------------------------------------------------------------
# One process: a signal handler sets a flag the loop checks every step. In both process
# states (tests/support/process_states.py): on a single-host TPU VM libtpu is loaded and
# its failure handler owned SIGTERM (it once turned this stop into a SIGSEGV).

@pytest.fixture(scope="module", params=PROCESS_STATES)
def preempted_run(request, tmp_path_factory, cache):
    """SIGTERM right after the first logged step, then `--resume` for 8 more steps."""
    root = tmp_path_factory.mktemp(f"preempted-{request.param}")
    log = root / "preempted.log"
    env = harness_env(**state_env(request.param))
    process = start_harness(_single_args(root, cache, *LONG_RUN), log_path=log, env=env)
    try:
        wait_for_output(log, r"^Step +\d+:", process, timeout=RUN_TIMEOUT_S)
        assert libtpu_loaded(process.pid) == (request.param == TPU_VM)
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_WITHIN_S}s after SIGTERM:\n{log.read_text()[-3000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    output = log.read_text()
    match = re.search(f"^{PREEMPTED}", output, re.MULTILINE)
    assert match, f"rc {returncode}, no preemption message:\n{output[-3000:]}"
    stopped_at = int(match.group(1))
    rows_at_stop = read_metrics(root / "run" / "metrics.jsonl")
    steps_at_stop = existing_steps(str(root / "ckpt"))
    resumed = run_harness(_single_args(root, cache, "--resume", "--num_train_steps", str(stopped_at + 8),
                                       "--save_interval", "1000"), timeout=RUN_TIMEOUT_S, env=env)
    reference = uninterrupted_rows("1x8", stopped_at + 8, workdir=root / "reference",
                                   extra_args=tuple(cache))
    return {"returncode": returncode, "output": output, "stopped_at": stopped_at, "rows_at_stop": rows_at_stop,
            "steps_at_stop": steps_at_stop, "resumed": resumed, "reference": reference, "root": root}


def test_sigterm_saves_a_checkpoint_at_the_stop_step_and_exits_42(preempted_run):
    run = preempted_run
    stopped_at = run["stopped_at"]

    assert run["returncode"] == EXIT_RESTARTABLE, run["output"][-3000:]
    assert stopped_at >= 1
    assert "Training complete!" not in run["output"]
    assert run["steps_at_stop"] == [stopped_at]  # the preemption checkpoint, and only it
    # Every step before the stop was finished and logged, none after it.
    assert run["rows_at_stop"] == run["reference"][:stopped_at]


def test_resume_after_preemption_continues_bit_for_bit(preempted_run):
    run = preempted_run
    resumed, stopped_at = run["resumed"], run["stopped_at"]

    assert resumed.returncode == 0, failure_report(resumed)
    assert f"Resumed from checkpoint at step {stopped_at}" in resumed.stdout.splitlines()
    assert read_metrics(run["root"] / "run" / "metrics.jsonl") == run["reference"]


# ---------------------------------------------------------------------------------------
# A local pod: JAX's preemption sync manager makes every host stop at the same step.

def _preempt_pod(root: Path, cache: list[str], *, signal_host: int | None, state: str = PROCESS_STATES[0],
                 slow_host: int | None = None):
    """Starts a 2x4 pod in process state `state` and, after host 0's first logged step,
    sends SIGTERM to the launcher (it forwards to every host) or to the host `signal_host`
    only. From the signal on, host `slow_host` (if any) runs in SIGSTOP/SIGCONT bursts."""
    log = root / "launcher.log"
    launcher = start_local_pod(2, 4, _pod_command(root, cache, *LONG_RUN), log_path=log, timeout=RUN_TIMEOUT_S,
                               kill_grace=STOP_WITHIN_S, env=harness_env(**state_env(state)))
    hosts = {}
    try:
        wait_for_output(log, r"^\[host 0\] Step +\d+:", launcher, timeout=RUN_TIMEOUT_S)
        hosts = local_pod_hosts(launcher.pid)
        assert sorted(hosts) == [0, 1], hosts
        assert [libtpu_loaded(host.pid) for host in hosts.values()] == [state == TPU_VM] * 2
        with contextlib.ExitStack() as slowed:
            if slow_host is not None:
                slowed.enter_context(braking(launcher, slow_host, **SLOW_SAVE))
            if signal_host is None:
                launcher.send_signal(signal.SIGTERM)
            else:
                os.kill(hosts[signal_host].pid, signal.SIGTERM)
            try:
                returncode = launcher.wait(timeout=STOP_WITHIN_S + 30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"pod still running long after SIGTERM:\n{log.read_text()[-3000:]}")
        left = [host_id for host_id, host in hosts.items() if host.same_process()]
    finally:
        stop_local_pod(launcher, hosts)
    return returncode, log.read_text(), left


def _check_one_agreed_stop(root: Path, returncode: int, output: str, left: list[int], *,
                           expected_returncode: int = 0) -> int:
    """Asserts the pod stopped together; returns the agreed step. The launcher exits 0 when
    it asked for the stop itself, else with the hosts' restartable 42."""
    assert returncode == expected_returncode, output[-4000:]
    assert left == [], f"hosts still alive after the launcher exited: {left}"
    messages = re.findall(rf"^\[host (\d+)\] {PREEMPTED}", output, re.MULTILINE)
    assert len(messages) == 1 and messages[0][0] == "0", (messages, output[-4000:])
    stopped_at = int(messages[0][1])
    assert "Training complete!" not in output
    assert "ended with" not in output and "sending SIGKILL" not in output, output[-4000:]
    assert existing_steps(str(root / "ckpt")) == [stopped_at]
    # Both hosts wrote their shards of that one step.
    state = root / "ckpt" / str(stopped_at) / "state"
    assert sorted(p.name for p in state.glob("ocdbt.process_*")) == ["ocdbt.process_0", "ocdbt.process_1"]
    return stopped_at


def _check_pod_resume(root: Path, stopped_at: int, cache: list[str]) -> None:
    resumed = launch_local(2, 4, _pod_command(root, cache, "--resume", "--num_train_steps", str(stopped_at + 8),
                                              "--save_interval", "1000"), timeout=RUN_TIMEOUT_S)

    assert resumed.returncode == 0, failure_report(resumed)
    assert f"[host 0] Resumed from checkpoint at step {stopped_at}" in resumed.stdout.splitlines()
    reference = uninterrupted_rows("2x4", stopped_at + 8, workdir=root / "reference",
                                   extra_args=tuple(cache))
    assert read_metrics(root / "run" / "metrics.jsonl") == reference


@pytest.mark.parametrize("state", PROCESS_STATES)
def test_sigterm_to_the_launcher_stops_every_host_at_one_step_and_resume_is_exact(tmp_path, cache, state):
    returncode, output, left = _preempt_pod(tmp_path, cache, signal_host=None, state=state)

    stopped_at = _check_one_agreed_stop(tmp_path, returncode, output, left)
    assert "launch.local: stop requested" in output

    _check_pod_resume(tmp_path, stopped_at, cache)


def test_a_coordinator_slow_to_save_the_agreed_step_is_not_cut_short(tmp_path, cache):
    """Host 1 saves its shards, finishes and says `done` while host 0, slowed from outside,
    is still in the agreed step's save: a peer that finished is not a lost peer (CI once
    saw host 0 exit 42 here, "left the training loop", and take host 1 down with it)."""
    returncode, output, left = _preempt_pod(tmp_path, cache, signal_host=None, slow_host=0)

    _check_one_agreed_stop(tmp_path, returncode, output, left)
    assert "stopped responding" not in output


@pytest.mark.soak
def test_sigterm_to_one_host_stops_every_host_at_one_step_and_resume_is_exact(tmp_path, cache):
    returncode, output, left = _preempt_pod(tmp_path, cache, signal_host=1)

    stopped_at = _check_one_agreed_stop(tmp_path, returncode, output, left, expected_returncode=EXIT_RESTARTABLE)
    assert "stop requested" not in output  # the launcher itself got no signal

    _check_pod_resume(tmp_path, stopped_at, cache)
