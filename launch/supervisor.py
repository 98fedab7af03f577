"""Start, watch and stop the processes that together make up one pod job.

Both launchers build on this: `launch.local` runs one child per simulated host,
`launch.tpu_pod` runs one `gcloud ... ssh --worker=i` per TPU worker. A pod is only as
healthy as its sickest process (a dead peer leaves the others hanging in a collective
until a heartbeat timeout aborts them), so the rules here are:

- every process runs in its own session, so its whole process group, grandchildren
  included, can be signalled and nothing outlives the supervisor;
- every output line is relayed as it arrives (launch/streaming.py), and heard for what
  it says about the pod (launch/failures.py: a host named lost, a worker's own report
  of how its program ended);
- the first failure stops everything: a host the others named unresponsive gets SIGKILL
  at once, the rest a graceful stop (SIGTERM by default), then SIGKILL once the grace
  period is over; the report names the failure the way launch/failures.py says;
- no wait is unbounded: everything polls against a deadline.
"""

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from launch.failures import (
    CLEAN_STOP_CODES, EXIT_TIMED_OUT, PodResult, Testimony, describe_returncode, failure_line, shell_status,
    unresponsive,
)
from launch.streaming import start_relays

POLL_S = 0.05
# After SIGKILL the kernel reaps within milliseconds; this only bounds a pathological
# case (a process stuck in uninterruptible sleep).
KILL_WAIT_S = 5.0
# How long to wait for the output relays to drain after all processes are gone.
RELAY_DRAIN_S = 2.0


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    """Signal the process group the process leads (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


@dataclasses.dataclass
class _Member:
    label: str
    process: subprocess.Popen
    log: TextIO | None
    relays: list[threading.Thread] = dataclasses.field(default_factory=list)
    testimony: Testimony = dataclasses.field(default_factory=Testimony)
    swept: bool = False
    on_line: Callable[[str], bool] | None = None  # the caller's observer: True if it showed the line

    def returncode(self) -> int | None:
        """None while running; then what the process reported for its program, else its own."""
        rc = self.process.poll()
        return rc if rc is None or self.testimony.reported is None else self.testimony.reported

    def observe(self, line: str) -> bool:
        """Hear what the line says about the pod; True when the caller's observer showed it."""
        self.testimony.hear(line)
        return self.on_line is not None and self.on_line(line)


class Supervisor:
    """Owns a set of started processes: relays their output, stops them, never leaks them.

    Use as a context manager; leaving the block (normally or by an exception) kills every
    process group that is still alive.
    """

    def __init__(self, program: str, stdout: TextIO, stderr: TextIO):
        self._program = program
        self._stdout = stdout
        self._stderr = stderr
        self._lock = threading.Lock()
        self._members: list[_Member] = []

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def say(self, message: str) -> None:
        """Print one line of the supervisor's own to stderr, not interleaved with relays."""
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._stderr.write(f"{self._program}: {message}\n")
            self._stderr.flush()

    def start(
        self,
        label: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin_data: bytes | None = None,
        log_path: Path | None = None,
        on_line: Callable[[str], bool] | None = None,
    ) -> subprocess.Popen:
        """Start one process in its own session, relaying its output as `[label] line`.

        `stdin_data` is written to its stdin, which is then closed (stdin is /dev/null
        otherwise); `log_path` receives its stdout and stderr lines without the prefix;
        `on_line` sees each line first (from the relay threads) and returns True when it
        has shown the line in its own words, which then goes to the log only.
        """
        # Opened first: a process must never run before it is registered for cleanup.
        log = open(log_path, "w", encoding="utf-8") if log_path is not None else None
        try:
            process = subprocess.Popen(
                list(argv),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except BaseException:
            if log is not None:
                log.close()
            raise
        member = _Member(label, process, log, on_line=on_line)
        self._members.append(member)
        member.relays = start_relays(label, (process.stdout, process.stderr), (self._stdout, self._stderr),
                                     self._lock, log, member.observe)
        if stdin_data is not None:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.write(stdin_data)
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        return process

    def wait(
        self,
        *,
        timeout: float | None,
        kill_grace: float,
        stop_event: threading.Event | None = None,
        graceful_stop: Callable[[], None] | None = None,
    ) -> PodResult:
        """Wait until all processes exit 0, one fails, `timeout` passes or a stop is requested.

        On failure, timeout or stop, `graceful_stop` runs (default: SIGTERM to every
        running process group) and processes still running `kill_grace` seconds later
        get SIGKILL. Processes that exit 0 or 42 after a stop request count as success:
        that is how a preempted host that saved its state looks.
        """
        stop_event = stop_event or threading.Event()
        started = time.monotonic()
        while True:
            codes = self._poll()
            failed = [i for i, rc in enumerate(codes) if rc not in (None, 0)]
            if failed:
                self._drain_relays(self._members[failed[0]])  # its last lines name a lost host, its status
                self._report_failure(failed[0], self._members[failed[0]].returncode())
                self._shut_down(kill_grace, graceful_stop)
                return self._result(first_failure=failed[0])
            if all(rc == 0 for rc in codes):
                return self._result(first_failure=None)
            if timeout is not None and time.monotonic() - started >= timeout:
                running = tuple(i for i, rc in enumerate(codes) if rc is None)
                self.say(f"timed out after {timeout:g}s; still running: {self._labels(running)}")
                self._shut_down(kill_grace, graceful_stop)
                return self._result(first_failure=None, timed_out=True, running_at_timeout=running)
            if stop_event.is_set():
                return self._stop_on_request(kill_grace, graceful_stop)
            stop_event.wait(POLL_S)

    def close(self) -> None:
        """Kill whatever is left, then let the output relays drain (bounded)."""
        for member in self._members:
            if not member.swept:
                _signal_group(member.process, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    member.process.wait(timeout=KILL_WAIT_S)
                member.swept = True
        deadline = time.monotonic() + RELAY_DRAIN_S
        for member in self._members:
            self._drain_relays(member, deadline)
            if member.log is not None:
                member.log.close()

    @staticmethod
    def _drain_relays(member: _Member, deadline: float | None = None) -> None:
        """Wait (bounded) until the relays have read everything an exited process wrote."""
        deadline = time.monotonic() + RELAY_DRAIN_S if deadline is None else deadline
        for relay in member.relays:
            relay.join(timeout=max(0.0, deadline - time.monotonic()))

    def _poll(self) -> list[int | None]:
        """Return codes so far; kill the group of every newly exited leader right away.

        Sweeping right after reaping matters: a leftover grandchild would hold the output
        pipe open, and killing its group later risks hitting a recycled pid.
        """
        codes = []
        for member in self._members:
            rc = member.returncode()
            if rc is not None and not member.swept:
                _signal_group(member.process, signal.SIGKILL)
                member.swept = True
            codes.append(rc)
        return codes

    def _signal_running(self, sig: signal.Signals) -> None:
        for member in self._members:
            if member.process.poll() is None:
                _signal_group(member.process, sig)

    def _running(self) -> list[int]:
        return [i for i, rc in enumerate(self._poll()) if rc is None]

    def _wait_until_exited(self, deadline: float) -> None:
        while self._running() and time.monotonic() < deadline:
            time.sleep(POLL_S)

    def _unresponsive(self) -> list[int]:
        return unresponsive([member.testimony for member in self._members])

    def _shut_down(self, grace: float, graceful_stop: Callable[[], None] | None) -> None:
        """SIGKILL for processes named unresponsive, a graceful stop for the rest, then
        SIGKILL for whatever is still running after `grace` seconds."""
        for i in self._unresponsive():
            if self._members[i].process.poll() is None:
                _signal_group(self._members[i].process, signal.SIGKILL)
        stopper = threading.Thread(
            target=graceful_stop or (lambda: self._signal_running(signal.SIGTERM)),
            name="graceful stop",
            daemon=True,
        )
        started = time.monotonic()
        stopper.start()
        self._wait_until_exited(started + grace)
        running = self._running()
        if running:
            self.say(f"{self._labels(running)} still running after {grace:g}s; sending SIGKILL")
            self._signal_running(signal.SIGKILL)
            self._wait_until_exited(time.monotonic() + KILL_WAIT_S)
        # The graceful stop may still be cleaning up elsewhere (a remote pkill); it is
        # bounded by the caller, and this join by the same budget.
        stopper.join(timeout=max(0.0, started + grace + KILL_WAIT_S - time.monotonic()))

    def _stop_on_request(self, kill_grace: float, graceful_stop: Callable[[], None] | None) -> PodResult:
        self.say(f"stop requested; stopping {self._labels(self._running())}")
        self._shut_down(kill_grace, graceful_stop)
        self._drain_all()
        codes = self._final_codes()
        failed = [i for i, rc in enumerate(codes) if rc not in CLEAN_STOP_CODES]
        for i in failed:
            self.say(
                f"{self._members[i].label} ended with {describe_returncode(codes[i])} after the stop request"
            )
        return PodResult(codes, first_failure=failed[0] if failed else None, interrupted=True,
                         unresponsive=tuple(self._unresponsive()))

    def _report_failure(self, index: int, returncode: int) -> None:
        labels = [member.label for member in self._members]
        self.say(failure_line(labels, index, returncode, self._members[index].testimony))

    def _labels(self, indices: Sequence[int]) -> str:
        return ", ".join(self._members[i].label for i in indices) or "none"

    def _final_codes(self) -> tuple[int, ...]:
        """Return codes after shutdown; one not reaped yet has had SIGKILL, so report that."""
        return tuple(-signal.SIGKILL if rc is None else rc for rc in self._poll())

    def _result(self, **fields: object) -> PodResult:
        self._drain_all()
        return PodResult(self._final_codes(), unresponsive=tuple(self._unresponsive()), **fields)

    def _drain_all(self) -> None:
        """Lets the relays read what exited processes wrote (their status lines), bounded."""
        deadline = time.monotonic() + RELAY_DRAIN_S
        for member in self._members:
            if member.process.poll() is not None:
                self._drain_relays(member, deadline)


@contextlib.contextmanager
def stop_on_signals(stop_event: threading.Event) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a stop request, so the pod is shut down in order.

    Only the main thread may install signal handlers; the previous handlers come back
    when the block ends.
    """
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda signum, frame: stop_event.set()) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    stop_event: threading.Event | None = None,
    capture_stdout: bool = False,
) -> tuple[int, str]:
    """Run one short command to completion in its own session; kill its group on timeout.

    Returns (returncode, captured stdout or ""); 124 on timeout, and the command's group
    is killed also when a stop is requested or the caller is interrupted.
    """
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture_stdout else None,
        start_new_session=True,
    )
    output = ""
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                out, _ = process.communicate(timeout=POLL_S)
                output = out.decode("utf-8", errors="replace") if out is not None else ""
                return process.returncode, output
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    return EXIT_TIMED_OUT, output
                if stop_event is not None and stop_event.is_set():
                    return shell_status(-signal.SIGTERM), output
    finally:
        _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=KILL_WAIT_S)
