"""Names a host that died or froze, before JAX's own abort does so less clearly.

When a peer dies, the survivors are often blocked inside a collective or JAX's
preemption barrier, so the training loop never gets to say anything; at
`heartbeat_timeout` JAX aborts them. This thread runs beside the loop: every second
each host bumps a counter in the coordination service's key-value store, and watches
everyone's counters with its own monotonic clock (so clock skew between hosts doesn't
matter). A host whose counter has not moved for `silence_s` (60% of JAX's heartbeat
timeout, so this fires first) is reported by index, and the process exits with
`EXIT_HOST_LOST` (3). If the coordinator itself stops answering for `silence_s`, that
is reported as host 0.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

import jax

EXIT_HOST_LOST = 3
KEY_PREFIX = "podharness/alive/"
BEAT_S = 1.0
DONE = "done"
SILENCE_FRACTION = 0.6  # of JAX's heartbeat timeout: report before JAX aborts


class HostWatchdog:
    def __init__(self, silence_s: float, *, exit_fn: Callable[[int], None] = os._exit):
        self.silence_s = silence_s
        self._exit = exit_fn
        self._host = jax.process_index()
        self._hosts = jax.process_count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "HostWatchdog":
        if self._hosts > 1:
            self._thread = threading.Thread(target=self._run, name="host-watchdog", daemon=True)
            self._thread.start()
        return self

    def wait_for_verdict(self) -> None:
        """Called when a collective failed: give the watchdog the time it needs to name a
        silent host (it then exits the process). Returns if every host keeps answering."""
        if self._thread is not None:
            self._stop.wait(self.silence_s + 3 * BEAT_S)

    def stop(self) -> None:
        """Stops watching and tells the others this host is done (not lost)."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=2 * BEAT_S)
        try:
            from jax._src import distributed

            distributed.global_state.client.key_value_set(f"{KEY_PREFIX}{self._host}", DONE, allow_overwrite=True)
        except Exception:
            pass  # the coordinator is gone; nobody is left to tell

    def _run(self) -> None:
        from jax._src import distributed  # the public API has no key-value store

        client = distributed.global_state.client
        beats = 0
        last_change = {h: time.monotonic() for h in range(self._hosts)}
        last_value: dict[int, str] = {}
        coordinator_ok = time.monotonic()
        while not self._stop.wait(BEAT_S):
            now = time.monotonic()
            try:
                beats += 1
                client.key_value_set(f"{KEY_PREFIX}{self._host}", str(beats), allow_overwrite=True)
                seen = dict(client.key_value_dir_get(KEY_PREFIX))
                coordinator_ok = now
            except Exception as err:  # the coordination service itself is gone
                if now - coordinator_ok > self.silence_s:
                    self._report([0], f"the coordinator stopped answering ({type(err).__name__})")
                continue
            for host in range(self._hosts):
                value = seen.get(f"{KEY_PREFIX}{host}")
                if value is not None and value != last_value.get(host):
                    last_value[host] = value
                    last_change[host] = now
            silent = [h for h in range(self._hosts) if h != self._host and last_value.get(h) != DONE
                      and now - last_change[h] > self.silence_s]
            if silent:
                self._report(silent, f"no heartbeat for {self.silence_s:.0f} s")

    def _report(self, hosts: list[int], why: str) -> None:
        if self._stop.is_set():
            return
        print(f"harness-train: error: host {self._host}: host(s) {', '.join(map(str, hosts))} "
              f"stopped responding: {why}; exiting", file=sys.stderr, flush=True)
        sys.stdout.flush()
        self._exit(EXIT_HOST_LOST)
