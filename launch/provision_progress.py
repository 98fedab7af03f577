"""Provisioning progress per TPU worker, for launch.tpu_pod: setting up a worker (unpack
the release, make the venv, install the requirements) takes from seconds to minutes,
and with 16 workers the relayed output alone does not say who is where.

The worker's scripts mark each step they finish with one line on stderr,
`podharness-step: <what>` (launch/remote_script.py, launch/worker_setup.sh); the
launcher shows each as a line of its own instead (the worker's log keeps the marker),
timed from that worker's ssh start:

    launch.tpu_pod: worker 3 of 16: requirements installed (12.3 s)

and, once every worker has started the harness, one line naming the slowest.
Standard library only: it runs in the launcher, which must not import the harness.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MARKER = "podharness-step: "
RELEASE_UNPACKED = "release unpacked"
HARNESS_STARTING = "harness starting"


def step_statement(step: str) -> str:
    """Bash that marks `step` as done on this worker (stderr, as worker_setup.sh says things)."""
    return f'echo "{MARKER}{step}" >&2'


def parse_step(line: str) -> str | None:
    """The step a marker line names, else None."""
    line = line.rstrip("\n")
    return line[len(MARKER):] if line.startswith(MARKER) else None


class ProvisionProgress:
    """Collects the workers' step markers and says each one; thread-safe (every worker's
    two output relays report here)."""

    def __init__(self, num_workers: int, say: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self._num_workers = num_workers
        self._say = say
        self._clock = clock
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._harness_at: dict[int, float] = {}

    def watch(self, worker: int) -> Callable[[str], bool]:
        """Call as worker `worker`'s ssh starts; returns the observer of its output lines
        (the Supervisor's `on_line`: True for a marker, which it has shown)."""
        self._started[worker] = self._clock()
        return lambda line: self._seen(worker, line)

    def _seen(self, worker: int, line: str) -> bool:
        step = parse_step(line)
        if step is None:
            return False
        with self._lock:
            seconds = self._clock() - self._started[worker]
            lines = [f"worker {worker} of {self._num_workers}: {step} ({seconds:.1f} s)"]
            if step == HARNESS_STARTING:
                self._harness_at[worker] = seconds
                if len(self._harness_at) == self._num_workers:
                    slowest = max(self._harness_at, key=self._harness_at.__getitem__)
                    lines.append(f"all {self._num_workers} workers started the harness; the slowest was worker "
                                 f"{slowest} ({self._harness_at[slowest]:.1f} s)")
        for text in lines:
            self._say(text)
        return True
