"""The restart contract: each way a run ends exits with its documented code (docs/failures.md,
harness/errors.py), and a stop reaches a host blocked in a collective.

    .venv/bin/python -m pytest -q tests/test_exit_codes.py               # default cases
    .venv/bin/python -m pytest -q -m soak tests/test_exit_codes.py       # lost host, blocked stop, real pods

0 done; 1 non-finite; 2 bad input; 3 an unusable TPU; 42 (restartable) a preemption that
saved, a lost host, or a stop that found a peer gone. The runs that end by a signal or an
error run in both process states (tests/support/process_states.py): a CPU preset's, and a
TPU VM's, with libtpu loaded and its signal handlers installed. The lost-host exit through the watchdog runs by default
in tests/test_host_loss.py; here it runs again, as a contract check, in the soak set.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from harness.errors import (EXIT_RESTARTABLE, CheckpointSaveError, HostLostError, NonFiniteStateError,
                            TpuUnavailableError, UsageError)
from harness.runtime.stop_deadline import StopDeadline
from harness.runtime.watchdog import DONE, EXIT_HOST_LOST, KEY_PREFIX
from launch.gke.manifest import RESTARTABLE_EXIT_CODES
from launch.local import free_port
from launch.failures import parse_lost_hosts_line
from tests.support.coordination import ExitRecorder
from tests.support.argv import train_args
from tests.support.process_states import PROCESS_STATES, TPU_VM, libtpu_loaded, state_env
from tests.support.runs import REPO_ROOT, harness_env, run_harness, start_harness, wait_for_output

RUN_TIMEOUT_S = 240
WAIT_S = 30  # bound on any wait for a verdict in the in-process tests


def test_the_documented_codes_and_the_gke_restart_list_agree() -> None:
    assert (UsageError.exit_code, NonFiniteStateError.exit_code, CheckpointSaveError.exit_code) == (2, 1, 1)
    assert TpuUnavailableError.exit_code == 3 and 3 not in RESTARTABLE_EXIT_CODES
    assert HostLostError.exit_code == EXIT_HOST_LOST == EXIT_RESTARTABLE == 42
    assert EXIT_RESTARTABLE in RESTARTABLE_EXIT_CODES
    assert not {0, 1, 2} & set(RESTARTABLE_EXIT_CODES)
    contract = (REPO_ROOT / "docs" / "failures.md").read_text()
    assert "restartable" in contract and "exit 42" in contract and "3 this host's TPU is" in contract


# --- Real runs, one per way a run ends ---------------------------------------------------


_args = partial(train_args, log_interval=1)


def test_bad_input_exits_2(tmp_path: Path) -> None:
    result = run_harness(["--config", "no-such-preset"], timeout=RUN_TIMEOUT_S)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("harness-train: error: ")


@pytest.mark.parametrize("state", PROCESS_STATES)
def test_a_non_finite_loss_exits_1(tmp_path: Path, cache: list[str], state: str) -> None:
    result = run_harness(_args(tmp_path, cache, "--testing_nonfinite_step", "2"), timeout=RUN_TIMEOUT_S,
                         env=harness_env(**state_env(state)))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "non-finite loss=nan" in result.stderr


@pytest.mark.parametrize("state", PROCESS_STATES)
def test_a_preemption_saves_then_exits_42(tmp_path: Path, cache: list[str], state: str) -> None:
    log = tmp_path / "run.log"
    process = start_harness(_args(tmp_path, cache, "--num_train_steps", "4000", "--save_interval", "10000"),
                            log_path=log, env=harness_env(**state_env(state)))
    try:
        wait_for_output(log, r"^Step +\d+:", process, timeout=RUN_TIMEOUT_S)
        assert libtpu_loaded(process.pid) == (state == TPU_VM)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert returncode == EXIT_RESTARTABLE, log.read_text()[-3000:]
    assert re.search(r"^Preempted \(SIGTERM\): all hosts stopped at step \d+", log.read_text(), re.MULTILINE)


def test_a_forced_tpu_that_does_not_come_up_exits_3_with_one_line(tmp_path: Path) -> None:
    """This machine has no TPU: `--platform tpu` must stop, not train on the CPU."""
    result = run_harness(["--platform", "tpu", "--no_wandb", "--checkpoint_dir", str(tmp_path / "ckpt"),
                          "--run_dir", str(tmp_path / "run")], timeout=RUN_TIMEOUT_S,
                         env=harness_env(**state_env(TPU_VM)))
    assert result.returncode == 3, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("harness-train: error:")]
    assert line.startswith("harness-train: error: the TPU did not initialise: ")
    assert line.endswith("this host has no TPU device files (/dev/accel*, /dev/vfio/[0-9]*)")
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "run").exists()


# --- The stop deadline against a fake key-value store (threads, no JAX) -----------------

class Beats:
    """The watchdog's key-value entries: `beat()` moves the named hosts' counters."""

    def __init__(self, hosts: int) -> None:
        self.values = {f"{KEY_PREFIX}{host}": "1" for host in range(hosts)}
        self.answering = True

    def beat(self, *hosts: int) -> None:
        for host in hosts:
            key = f"{KEY_PREFIX}{host}"
            self.values[key] = str(int(self.values[key]) + 1) if self.values[key] != DONE else DONE

    def read(self) -> dict[str, str]:
        if not self.answering:
            time.sleep(60)
        return dict(self.values)


@pytest.fixture
def deadlines() -> Iterator[list[StopDeadline]]:
    """Deadlines a test starts; their threads are cancelled afterwards."""
    made: list[StopDeadline] = []
    yield made
    for deadline in made:
        deadline.cancel()


def _deadline(made: list[StopDeadline], beats: Beats, exits: ExitRecorder, host: int = 0) -> StopDeadline:
    made.append(StopDeadline(host, 3, beats.read, exit_fn=exits, stall_s=0.3, peer_silence_s=0.3,
                             kv_timeout_s=0.3, poll_s=0.05))
    return made[-1]


def _keep(action, until: threading.Event, seconds: float) -> None:
    """Runs `action` every 50 ms for `seconds`, or until `until` is set."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until.is_set():
        action()
        time.sleep(0.05)


def _error_line(capfd: pytest.CaptureFixture[str]) -> str:
    """The one `harness-train: error:` line on stderr."""
    [line] = [line for line in capfd.readouterr().err.splitlines() if line.startswith("harness-train: error:")]
    return line


@pytest.mark.parametrize("in_loop, ending", [
    (True, "no step finished for 0.3 s after a stop (SIGTERM); exiting"),
    (False, "a stop (SIGTERM) came after the training loop ended; exiting"),  # during the final save or summary
], ids=["in-the-loop", "after-the-loop"])
def test_a_host_whose_peer_went_silent_exits_42_naming_it(
    in_loop: bool, ending: str, capfd: pytest.CaptureFixture[str], deadlines: list[StopDeadline]
) -> None:
    beats, exits = Beats(3), ExitRecorder()
    deadline = _deadline(deadlines, beats, exits)
    if not in_loop:
        deadline.loop_ended()
    deadline.stop_requested()
    _keep(lambda: beats.beat(0, 1), exits.given, WAIT_S)  # host 2 is silent; the loop never moves
    assert exits.codes == [EXIT_RESTARTABLE]
    line = _error_line(capfd)
    assert parse_lost_hosts_line(line) == (0, (2,))
    assert line.endswith(ending)


def test_a_host_that_keeps_stepping_is_not_cut_short(deadlines: list[StopDeadline]) -> None:
    beats, exits = Beats(3), ExitRecorder()
    deadline = _deadline(deadlines, beats, exits)
    deadline.stop_requested()
    _keep(lambda: (beats.beat(0, 1), deadline.step_finished()), exits.given, 1.5)
    assert exits.codes == []


def test_a_blocked_host_whose_peers_all_beat_waits(deadlines: list[StopDeadline]) -> None:
    """A slow step or save: every peer is alive, so the launcher's grace decides, not this."""
    beats, exits = Beats(3), ExitRecorder()
    _deadline(deadlines, beats, exits).stop_requested()
    _keep(lambda: beats.beat(0, 1, 2), exits.given, 1.5)
    assert exits.codes == []


def test_a_peer_that_finished_is_never_gone_but_a_silent_one_is(
    capfd: pytest.CaptureFixture[str], deadlines: list[StopDeadline]
) -> None:
    """Host 2 said `done` and stopped beating while host 0, stalled in the loop (the rest
    of the agreed step's save), waits: not a lost peer. Host 1 going silent then is."""
    beats, exits = Beats(3), ExitRecorder()
    beats.values[f"{KEY_PREFIX}2"] = DONE
    _deadline(deadlines, beats, exits).stop_requested()
    _keep(lambda: beats.beat(0, 1), exits.given, 1.5)
    assert exits.codes == []
    _keep(lambda: beats.beat(0), exits.given, WAIT_S)
    assert exits.codes == [EXIT_RESTARTABLE]
    assert parse_lost_hosts_line(_error_line(capfd)) == (0, (1,))


def test_a_coordinator_that_does_not_answer_is_named_as_host_0(
    capfd: pytest.CaptureFixture[str], deadlines: list[StopDeadline]
) -> None:
    beats, exits = Beats(3), ExitRecorder()
    beats.answering = False
    _deadline(deadlines, beats, exits, host=1).stop_requested()
    assert exits.given.wait(WAIT_S)
    assert exits.codes == [EXIT_RESTARTABLE]
    line = _error_line(capfd)
    assert parse_lost_hosts_line(line) == (1, (0,)) and "the coordinator did not answer" in line


# --- SIGTERM heard on a thread, passed on to JAX's notifier and to no other C handler ---

LIBTPU_HANDLER_CHILD = """
import ctypes, os, signal, threading, time
import jax
from harness.runtime.sigterm import SigtermListener, current_action, takes_siginfo

jax.devices()  # JAX_PLATFORMS="": JAX loads libtpu, which installs its failure handler
libtpu = current_action(signal.SIGTERM)
print("libtpu's handler takes siginfo:", takes_siginfo(libtpu), flush=True)
heard = threading.Event()
listener = SigtermListener(lambda: (print("listener on", threading.current_thread().name, flush=True), heard.set()))
listener.start()
threading.Thread(target=lambda: (time.sleep(0.2), os.kill(os.getpid(), signal.SIGTERM)), daemon=True).start()
libc = ctypes.CDLL(None)
deadline = time.monotonic() + 20
while not heard.is_set() and time.monotonic() < deadline:
    libc.usleep(50_000)  # the main thread blocked in C, as in a collective
time.sleep(0.3)  # a chained libtpu handler would have killed the process by now
print("alive after SIGTERM:", heard.is_set(), flush=True)
listener.close()
print("libtpu's handler restored:", current_action(signal.SIGTERM).handler == libtpu.handler, flush=True)
"""


def test_sigterm_with_libtpu_loaded_reaches_the_listener_and_never_libtpus_handler() -> None:
    """The single-host TPU VM state: libtpu's handler (absl's, SA_SIGINFO) owns SIGTERM.
    Called with a made-up siginfo it crashed the run with SIGSEGV (exit 139)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(LIBTPU_HANDLER_CHILD)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, env=harness_env(**state_env(TPU_VM)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "libtpu's handler takes siginfo: True",
        "listener on sigterm-listener",
        "alive after SIGTERM: True",
        "libtpu's handler restored: True",
    ]


JAX_NOTIFIER_CHILD = """
import signal, sys, threading, time
import jax
from jax.experimental import multihost_utils
from harness.runtime import distributed
from harness.runtime.sigterm import SigtermListener, current_action, jax_preemption_notifier, takes_siginfo

distributed._initialize_hearing_sigterm(coordinator_address=sys.argv[1], num_processes=1, process_id=0)
notifier = jax_preemption_notifier()
print("notifier is SIGTERM's handler:", notifier.address == current_action(signal.SIGTERM).handler,
      "takes siginfo:", takes_siginfo(current_action(signal.SIGTERM)), flush=True)
jax.devices()  # loads libtpu (JAX_PLATFORMS=""), which leaves JAX's handler in place
print("still JAX's after libtpu:", current_action(signal.SIGTERM).handler == notifier.address, flush=True)
heard = threading.Event()
listener = SigtermListener(heard.set, notifier=notifier).start()
signal.raise_signal(signal.SIGTERM)
step, deadline = 0, time.monotonic() + 30
while not multihost_utils.reached_preemption_sync_point(step) and time.monotonic() < deadline:
    step += 1
    time.sleep(0.05)
print("heard:", heard.is_set(), "JAX's protocol reached its sync point:", time.monotonic() < deadline, flush=True)
listener.close()
"""


def test_jax_preemption_protocol_still_hears_sigterm_through_the_listener() -> None:
    """`jax.distributed.initialize` installs JAX's notifier (a one-argument handler); the
    harness records it and passes every SIGTERM on, so `reached_preemption_sync_point`
    still turns True. Fails clearly if the pinned jax stops installing it that way."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(JAX_NOTIFIER_CHILD), f"127.0.0.1:{free_port()}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=90,
                            env=harness_env(**state_env(TPU_VM)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "notifier is SIGTERM's handler: True takes siginfo: False",
        "still JAX's after libtpu: True",
        "heard: True JAX's protocol reached its sync point: True",
    ]


AFTER_SHUTDOWN_CHILD = """
import sys, threading, time
import jax
from harness.runtime import distributed, preemption
from harness.runtime.jax_internals import coordination_client
from harness.runtime.stop_deadline import StopDeadline
from harness.runtime.watchdog import KEY_PREFIX

distributed._initialize_hearing_sigterm(coordinator_address=sys.argv[1], num_processes=1, process_id=0)
coordination_client().key_value_set(KEY_PREFIX + "0", "done", allow_overwrite=True)
print("beats while in the service:", preemption._read_beats(), flush=True)
exits = []
deadline = StopDeadline(0, 2, preemption._read_beats, exit_fn=exits.append, stall_s=0.1, poll_s=0.05)
deadline.loop_ended()
jax.distributed.shutdown()  # what the atexit handler does on the way out
deadline.stop_requested()   # a SIGTERM arrives after it
time.sleep(1.0)             # ten polls, each past the stall
watching = [t for t in threading.enumerate() if t.name == "stop-deadline"]
print("exits:", exits, "still watching:", bool(watching), flush=True)
"""


def test_a_stop_after_jax_distributed_shut_down_names_nobody() -> None:
    """A SIGTERM on the way out, after `jax.distributed.shutdown` (an atexit handler) has
    run: the real client is gone, which is no silent coordinator. CI once saw host 1 print
    'host(s) 0 stopped responding: the coordinator did not answer ('NoneType' object has
    no attribute 'key_value_dir_get')' after a clean agreed stop."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(AFTER_SHUTDOWN_CHILD), f"127.0.0.1:{free_port()}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=90,
                            env=harness_env(JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "beats while in the service: {'podharness/alive/0': 'done'}",
        "exits: [] still watching: False",
    ], result.stderr[-3000:]
    assert "stopped responding" not in result.stderr


# --- Real pods (soak): a lost host, and a stop that reaches a host blocked on a dead peer --

def _pod_host(root: Path, cache: list[str], port: int, process_id: int, *extra: str) -> subprocess.Popen:
    env = harness_env(HARNESS_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", HARNESS_NUM_PROCESSES="2",
                      HARNESS_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu")
    args = ["--config", "local-2x4", "--no_wandb", "--log_interval", "1", *cache, "--num_train_steps", "100000",
            "--save_interval", "100000", "--checkpoint_dir", str(root / "ckpt"), "--run_dir", str(root / "run"),
            *extra]
    return start_harness(args, log_path=root / f"host-{process_id}.log", env=env)


def _kill_host_1_mid_run(root: Path, cache: list[str], *extra: str) -> tuple[subprocess.Popen, float]:
    """Start a 2x4 pod (two harness processes, no launcher), SIGKILL host 1 after a step;
    returns host 0 and when host 1 died."""
    port = free_port()
    hosts = [_pod_host(root, cache, port, i, *extra) for i in range(2)]
    try:
        wait_for_output(root / "host-0.log", r"^Step +\d+:", hosts[0], timeout=RUN_TIMEOUT_S)
    except BaseException:
        for host in hosts:
            host.kill()
        raise
    hosts[1].kill()
    hosts[1].wait(timeout=30)
    return hosts[0], time.monotonic()


@pytest.mark.soak
def test_a_lost_host_exits_42(tmp_path: Path, cache: list[str]) -> None:
    survivor, _ = _kill_host_1_mid_run(tmp_path, cache, "--heartbeat_timeout", "10")
    try:
        returncode = survivor.wait(timeout=RUN_TIMEOUT_S)
    finally:
        survivor.kill()
    output = (tmp_path / "host-0.log").read_text()
    assert returncode == EXIT_RESTARTABLE, output[-3000:]
    assert "harness-train: error: host 0: host(s) 1 stopped responding" in output


@pytest.mark.soak
def test_a_stop_reaches_a_host_blocked_on_a_dead_peer_within_seconds(tmp_path: Path, cache: list[str]) -> None:
    """Host 1 dies; host 0 blocks on it. SIGTERM to host 0 (the launcher's stop) ends it
    with 42 in seconds, not after the watchdog's 36 s (default --heartbeat_timeout 60)."""
    survivor, died_at = _kill_host_1_mid_run(tmp_path, cache)
    try:
        survivor.send_signal(signal.SIGTERM)
        returncode = survivor.wait(timeout=RUN_TIMEOUT_S)
        took = time.monotonic() - died_at
    finally:
        survivor.kill()
    output = (tmp_path / "host-0.log").read_text()
    print(f"\nhost 0 exited {took:.1f} s after its peer died and the stop came")
    assert returncode == EXIT_RESTARTABLE, output[-3000:]
    assert "after a stop (SIGTERM)" in output
    assert took < 30, output[-3000:]
