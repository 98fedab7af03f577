"""Slow one host of a local pod from outside, the way a sick VM is slow: frozen in bursts.

`Brake(pid)` sends the process SIGSTOP, waits `stopped_s`, sends SIGCONT, waits
`running_s`, and again, from a thread of the test process, until `release()` (which
always leaves the process running). With the defaults (60 ms stopped, 40 ms running) the
host gets at most 40% of the wall clock, everywhere: imports, compiles, host work,
device work (the fake CPU devices are its own threads) and I/O.

    launcher = start_local_pod(3, 2, command, log_path=log, timeout=180)
    with braking(launcher, host=2):
        launcher.wait(timeout=210)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

from tests.support.runs import Host, local_pod_hosts

FIND_HOST_TIMEOUT_S = 60.0


class Brake:
    """SIGSTOP/SIGCONT bursts to one process until released; counts the bursts sent."""

    def __init__(self, host: Host, *, stopped_s: float = 0.06, running_s: float = 0.04):
        self._host, self._stopped_s, self._running_s = host, stopped_s, running_s
        self._released = threading.Event()
        self.bursts = 0
        self._thread = threading.Thread(target=self._run, name=f"brake {host.pid}", daemon=True)
        self._thread.start()

    def _signal(self, sig: signal.Signals) -> bool:
        if not self._host.same_process():  # exited: never signal a reused pid
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._host.pid, sig)
            return True
        return False

    def _run(self) -> None:
        try:
            while not self._released.is_set():
                if not self._signal(signal.SIGSTOP):
                    return
                self.bursts += 1
                self._released.wait(self._stopped_s)
                self._signal(signal.SIGCONT)
                self._released.wait(self._running_s)
        finally:
            self._signal(signal.SIGCONT)

    def release(self) -> None:
        """Stops braking; the process is left running (bounded wait for the thread)."""
        self._released.set()
        self._thread.join(timeout=5)
        self._signal(signal.SIGCONT)


def find_host(launcher: subprocess.Popen, host: int, *, timeout: float = FIND_HOST_TIMEOUT_S) -> Host:
    """Host `host`'s process among the launcher's children, polled until it appears."""
    deadline = time.monotonic() + timeout
    while True:
        found = local_pod_hosts(launcher.pid).get(host)
        if found is not None:
            return found
        assert launcher.poll() is None, f"the launcher ended (rc {launcher.returncode}) before host {host} started"
        assert time.monotonic() < deadline, f"host {host} did not start within {timeout:g} s"
        time.sleep(0.02)


@contextlib.contextmanager
def braking(launcher: subprocess.Popen, host: int, **timing: float) -> Iterator[Brake]:
    """Brakes host `host` of a pod started by `start_local_pod` for as long as the block runs."""
    brake = Brake(find_host(launcher, host), **timing)
    try:
        yield brake
    finally:
        brake.release()
