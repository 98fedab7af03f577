"""Naming how a pod job ended: which process failed, how, and which host its peers named lost.

The process that fails first is often not the one to blame. A survivor whose watchdog
found a silent peer exits 42 with the line `host(s) N stopped responding`
(harness/runtime/watchdog.py), so the report names the peer:

    launch.tpu_pod: worker 1 stopped responding (named by worker 0); worker 0 failed (exit code 42)

and the supervisor sends that peer SIGKILL at once (it does not answer; a graceful stop
would only wait out the grace). Process i of a supervisor is host i (launch.local's
HARNESS_PROCESS_ID, a TPU pod's worker number). A process may also report how the
program it ran ended (launch/worker_run.py's last line); that is what counts, so a TPU
worker killed by a signal is reported as that signal, not as ssh's 255. After a stop
request, exit 0 and the restartable 42 both count as a clean stop.

Standard library and harness/errors.py only: it runs in the launcher and on a worker
(launch/worker_run.py), neither of which may import the harness (jax).
"""

from __future__ import annotations

import dataclasses
import re
import signal
from collections.abc import Sequence

from harness.errors import EXIT_RESTARTABLE

EXIT_TIMED_OUT = 124
CLEAN_STOP_CODES = (0, EXIT_RESTARTABLE)
# harness/runtime/watchdog.py's `lost_hosts_line`: "harness-train: error: host R: host(s)
# L[, L...] stopped responding: WHY; exiting".
_LOST_HOSTS_LINE = re.compile(r"harness-train: error: host (\d+): host\(s\) (\d+(?:, \d+)*) stopped responding: ")
_ENDED_LINE = re.compile(r"^podharness-worker: harness ended: returncode=(-?\d+)$")


def ended_line(returncode: int) -> str:
    """The line a worker prints last: how the program it ran ended (Popen's return code)."""
    return f"podharness-worker: harness ended: returncode={returncode}"


def parse_ended_line(line: str) -> int | None:
    match = _ENDED_LINE.match(line.rstrip("\n"))
    return None if match is None else int(match[1])


def parse_lost_hosts_line(line: str) -> tuple[int, tuple[int, ...]] | None:
    """(reporting host, hosts it names) from a watchdog's line, else None."""
    match = _LOST_HOSTS_LINE.search(line)
    if match is None:
        return None
    return int(match[1]), tuple(int(host) for host in match[2].split(", "))


def describe_returncode(returncode: int) -> str:
    """Render a Popen return code the way a person reads it: exit code or signal name."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def shell_status(returncode: int) -> int:
    """Map a Popen return code to a process exit status, using the shell's 128+N for signals."""
    return returncode if returncode >= 0 else 128 - returncode


@dataclasses.dataclass
class Testimony:
    """What one process's output said about the pod: hosts it named lost, and the return
    code of the program it ran, if it reported one. Fed from its two relay threads."""

    named: list[int] = dataclasses.field(default_factory=list)
    reported: int | None = None

    def hear(self, line: str) -> None:
        report = parse_lost_hosts_line(line)
        if report is not None:
            self.named.extend(report[1])
        ended = parse_ended_line(line)
        if ended is not None:
            self.reported = ended


def unresponsive(testimonies: Sequence[Testimony]) -> list[int]:
    """Processes another process named as lost (a host never counts naming itself)."""
    return sorted({host for i, testimony in enumerate(testimonies) for host in testimony.named
                   if host != i and 0 <= host < len(testimonies)})


def failure_line(labels: Sequence[str], index: int, returncode: int, testimony: Testimony) -> str:
    """The report of process `index`'s failure: the hosts it named lost first, if any."""
    failed = f"{labels[index]} failed ({describe_returncode(returncode)})"
    named = sorted({host for host in testimony.named if host != index})
    if not named:
        return failed
    lost = ", ".join(labels[host] if host < len(labels) else f"host {host}" for host in named)
    return f"{lost} stopped responding (named by {labels[index]}); {failed}"


@dataclasses.dataclass(frozen=True)
class PodResult:
    """How a supervised pod ended.

    `returncodes` follow Popen: -N means killed by signal N. `first_failure` is the index
    of the process whose failure ended the run (None if none failed). `unresponsive`:
    the processes that others named as no longer responding.
    """

    returncodes: tuple[int, ...]
    first_failure: int | None
    timed_out: bool = False
    running_at_timeout: tuple[int, ...] = ()
    interrupted: bool = False
    unresponsive: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(rc == 0 for rc in self.returncodes)

    @property
    def exit_status(self) -> int:
        """0 if every process exited 0; 124 on timeout; else the first failure's status."""
        if self.timed_out:
            return EXIT_TIMED_OUT
        if self.first_failure is not None:
            return shell_status(self.returncodes[self.first_failure])
        return 0
