"""Names a host that died or froze, before JAX's own abort does so less clearly.

When a peer dies or freezes, the survivors are often blocked inside a collective or
JAX's preemption barrier, so the training loop never gets to say anything, and JAX's
coordination service later aborts them (SIGABRT and a C++ stack). This watchdog runs
beside the loop: every `BEAT_S` each host bumps a counter in the coordination service's
key-value store, and watches everyone's counters with its own monotonic clock (so clock
skew between hosts doesn't matter). A host whose counter has not moved for `silence_s`
(`SILENCE_FRACTION` of `--heartbeat_timeout`) is named in one line on stderr, and the
process exits with `EXIT_HOST_LOST` (42, restartable: harness/errors.py):

    harness-train: error: host R: host(s) L[, L...] stopped responding: WHY; exiting

(`lost_hosts_line`; the launchers parse it, see launch/failures.py). If the
coordinator (host 0) itself stops answering for `silence_s`, the other hosts name host 0.
The key-value calls run on their own thread, so a coordinator that never answers cannot
stall the verdict.

Winning the race with JAX. In jax/jaxlib 0.10.2 (XLA's coordination service,
xla/pjrt/distributed/coordination/) every process sends a heartbeat every
`heartbeat_timeout_seconds / 2` (coordination_service_agent.cc,
`StartSendingHeartbeats`: `heartbeat_interval = config_.heartbeat_timeout / 2`), and
the service, checking once a second, declares a process dead once its last heartbeat
is more than `heartbeat_timeout_seconds` old, then aborts all the others
(coordination_service.cc, `CheckStaleness` / `CheckHeartbeatTimeout`). A host that
freezes just before its next heartbeat was due has already been silent for almost half
the timeout, so JAX may abort the survivors only `heartbeat_timeout_seconds / 2` after
the freeze (seen: 34.9 s with 60; with 10, eight SIGSTOPs gave aborts 5.9 to 11.0 s
later). When the coordinator freezes, the others' next heartbeat RPC times out after
`heartbeat_timeout_seconds / 2` and they abort: again about half the timeout.
The rule, therefore: JAX gets `heartbeat_timeout_seconds = jax_heartbeat_timeout(silence_s)
= ceil(2 * (silence_s + REACTION_MARGIN_S))` (harness/runtime/distributed.py passes it),
so JAX's earliest abort comes `REACTION_MARGIN_S` after the watchdog's threshold, which
covers its own reaction time (up to two beats plus a key-value round trip).

jax 0.10.2 has no public API for the key-value store, so the client comes from
harness/runtime/jax_internals.py, which owns every use of JAX's private modules.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax

from harness.errors import EXIT_RESTARTABLE, error_line
from harness.runtime.jax_internals import coordination_client

EXIT_HOST_LOST = EXIT_RESTARTABLE
KEY_PREFIX = "podharness/alive/"
BEAT_S = 1.0
DONE = "done"
FAILED = "failed: "  # + why: a host that stops on an error says so, and the others stop at once
FAILED_GRACE_S = 3.0  # how long a host waits to meet the same error itself before naming the failed one
COORDINATOR = 0
SILENCE_FRACTION = 0.6  # of --heartbeat_timeout: how long a host may be silent before it is named
REACTION_MARGIN_S = 5.0  # between the watchdog's threshold and JAX's earliest abort


def jax_heartbeat_timeout(silence_s: float) -> int:
    """JAX's `heartbeat_timeout_seconds` for a watchdog that names hosts silent for `silence_s`.

    JAX can abort the survivors half its timeout after a freeze (module docstring), so
    the timeout is twice the watchdog's threshold plus its reaction margin.
    """
    return math.ceil(2 * (silence_s + REACTION_MARGIN_S))


def lost_hosts_line(reporter: int, lost: Sequence[int], why: str) -> str:
    """The one line a host prints before exiting `EXIT_HOST_LOST`; launchers parse it."""
    return (f"harness-train: error: host {reporter}: host(s) {', '.join(map(str, lost))} "
            f"stopped responding: {why}; exiting")


class HostWatchdog:
    """Beats for this host and names hosts whose beats stop (see the module docstring).

    `client`, `host` and `hosts` default to JAX's coordination client, process index and
    process count; tests pass fakes, and a short `beat_s`.
    """

    def __init__(self, silence_s: float, *, exit_fn: Callable[[int], None] = os._exit,
                 beat_s: float = BEAT_S, client: Any = None, host: int | None = None,
                 hosts: int | None = None):
        self.silence_s = silence_s
        self._exit = exit_fn
        self._beat_s = beat_s
        self._client = client
        self._host = jax.process_index() if host is None else host
        self._hosts = jax.process_count() if hosts is None else hosts
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[str, str] = {}  # the store's beats as of the latest answer
        self._answered_at = time.monotonic()  # when the coordinator last answered
        self._error = ""  # why the latest call failed, if it did
        self._threads: list[threading.Thread] = []
        self._outcome = DONE

    def start(self) -> "HostWatchdog":
        if self._hosts > 1:
            if self._client is None:
                self._client = coordination_client()
            self._answered_at = time.monotonic()
            self._threads = [
                threading.Thread(target=self._beat, name="host-watchdog-beat", daemon=True),
                threading.Thread(target=self._judge, name="host-watchdog", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
        return self

    def wait_for_verdict(self) -> None:
        """Called when a collective failed: give the watchdog the time it needs to name a
        silent host (it then exits the process). Returns if every host keeps answering."""
        if self._threads:
            self._stop.wait(self.silence_s + 3 * self._beat_s)

    def stop(self, outcome: str = DONE) -> None:
        """Stops watching and tells the others how this host ended: `DONE`, or
        `FAILED + why`, which makes every other host stop at once instead of waiting in
        its next collective for a host that will never come.

        Bounded: a coordinator that no longer answers costs at most two beats here.
        """
        self._outcome = outcome[:300]
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * self._beat_s)

    def _beat(self) -> None:
        """Key-value round trips: bump this host's counter, read everyone's; `DONE` at stop."""
        key = f"{KEY_PREFIX}{self._host}"
        beats = 0
        while not self._stop.is_set():
            beats += 1
            try:
                self._client.key_value_set(key, str(beats), allow_overwrite=True)
                seen = dict(self._client.key_value_dir_get(KEY_PREFIX))
            except Exception as err:  # the coordination service is unreachable; _judge decides
                with self._lock:
                    self._error = error_line(err, 200)
            else:
                with self._lock:
                    self._seen, self._answered_at, self._error = seen, time.monotonic(), ""
            self._stop.wait(self._beat_s)
        try:
            self._client.key_value_set(key, self._outcome, allow_overwrite=True)
        except Exception:
            pass  # the coordinator is gone; nobody is left to tell

    def _judge(self) -> None:
        """Every beat: has the coordinator, or has any host, been silent for `silence_s`?"""
        started = time.monotonic()
        last_value: dict[int, str] = {}
        last_change = {host: started for host in range(self._hosts)}
        while not self._stop.wait(self._beat_s):
            now = time.monotonic()
            with self._lock:
                seen, answered_at, error = self._seen, self._answered_at, self._error
            if self._host != COORDINATOR and now - answered_at > self.silence_s:
                self._report([COORDINATOR], f"the coordinator stopped answering for {self.silence_s:g} s"
                                            f" ({error or 'no reply'})")
                return
            for host in range(self._hosts):
                value = seen.get(f"{KEY_PREFIX}{host}")
                if value is not None and value != last_value.get(host):
                    last_value[host] = value
                    last_change[host] = answered_at
            failed = [host for host in range(self._hosts)
                      if host != self._host and last_value.get(host, "").startswith(FAILED)]
            if failed:
                self._report_failed(failed[0], last_value[failed[0]][len(FAILED):])
                return
            silent = [host for host in range(self._hosts) if host != self._host
                      and last_value.get(host) != DONE and now - last_change[host] > self.silence_s]
            if silent:
                self._report(silent, f"no heartbeat for {self.silence_s:g} s")
                return

    def _report_failed(self, host: int, why: str) -> None:
        # An error every host meets at the same step (a non-finite loss, an agreed check)
        # stops this host too, with its own message: give it a moment to get there.
        if self._stop.wait(FAILED_GRACE_S):
            return
        print(f"harness-train: error: host {self._host}: host {host} stopped on an error ({why}); exiting",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        self._exit(EXIT_HOST_LOST)

    def _report(self, hosts: list[int], why: str) -> None:
        if self._stop.is_set():
            return
        print(lost_hosts_line(self._host, hosts, why), file=sys.stderr, flush=True)
        sys.stdout.flush()
        self._exit(EXIT_HOST_LOST)
