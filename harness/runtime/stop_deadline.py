"""After a stop request (SIGTERM): end a host that cannot act on it, with the restartable code.

A SIGTERM normally reaches the loop at its next step: every host agrees on one step,
saves there and exits 42 (harness/runtime/preemption.py). A host whose peer is gone never
gets there: it waits in a collective that cannot complete (or in a save's barrier), and
would sit there until the watchdog's silence threshold (36 s by default) or the
launcher's SIGKILL, with nothing to show for the wait. From the SIGTERM on, this
thread checks every `poll_s`:

- has the loop finished a step in the last `stall_s`? Then it is moving and will reach
  the agreed step: wait;
- otherwise, is a peer gone? Gone means: its beat counter (the watchdog's key-value
  entries, harness/runtime/watchdog.py) has not moved for `peer_silence_s`, or the
  coordinator does not answer within `kv_timeout_s` (then host 0 is named). If so:
  print the watchdog's lost-hosts line and exit 42 at once (`os._exit`: JAX's shutdown
  would wait for the gone peer). If every peer still beats, keep waiting: a slow step
  or save is not cut short, and the launcher's grace bounds the wait.

A peer that says `done` is never gone, in the loop or after it: it finished only after
every collective it called had completed, so this host has joined each of them too, and
whatever this host still does before leaving the loop (the rest of the agreed step's
save, closing the prefetcher) needs nothing more from it. Counting it as gone cut short
a host that was merely slow to save (CI: host 0 exited 42 "left the training loop", and
the coordinator's exit aborted host 1). The key-value calls run on a helper thread, so
a coordinator that never answers cannot stall the verdict. Once this process has left
the coordination service (`jax.distributed.shutdown`, an atexit handler, passed its
barrier) `read_beats` raises `LeftTheService` and the watch ends quietly: there is no
peer left to wait for, and reading that as a silent coordinator once named a healthy
host 0 on the way out.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping

from harness.errors import EXIT_RESTARTABLE
from harness.runtime.watchdog import BEAT_S, COORDINATOR, DONE, KEY_PREFIX, lost_hosts_line

STALL_S = 3.0  # no step finished for this long after a SIGTERM: the loop is blocked
PEER_SILENCE_S = 3 * BEAT_S  # three missed beats
KV_TIMEOUT_S = 2.0

ReadBeats = Callable[[], Mapping[str, str]]


class LeftTheService(Exception):
    """Raised by a `ReadBeats` once this process has shut its coordination client down."""


def _bounded(read: ReadBeats, timeout: float) -> Mapping[str, str]:
    """`read()` on a helper thread; TimeoutError if it has not answered within `timeout`."""
    result: dict[str, Mapping[str, str] | BaseException] = {}

    def call() -> None:
        try:
            result["value"] = read()
        except Exception as err:
            result["value"] = err

    helper = threading.Thread(target=call, name="stop-deadline-kv", daemon=True)
    helper.start()
    helper.join(timeout)
    value = result.get("value")
    if value is None:
        raise TimeoutError(f"no answer within {timeout:g} s")
    if isinstance(value, BaseException):
        raise value
    return value


class StopDeadline:
    """Watches a stopping host (module docstring). `read_beats` returns the watchdog's
    key-value entries (None on a single process: no peer can be gone)."""

    def __init__(self, host: int, hosts: int, read_beats: ReadBeats | None, *,
                 exit_fn: Callable[[int], None] = os._exit, stall_s: float = STALL_S,
                 peer_silence_s: float = PEER_SILENCE_S, kv_timeout_s: float = KV_TIMEOUT_S,
                 poll_s: float = BEAT_S):
        self._host, self._hosts = host, hosts
        self._read_beats = read_beats
        self._exit = exit_fn
        self._stall_s, self._peer_silence_s = stall_s, peer_silence_s
        self._kv_timeout_s, self._poll_s = kv_timeout_s, poll_s
        self._progress_at = time.monotonic()
        self._in_loop = True
        self._started = threading.Event()
        self._cancelled = threading.Event()

    def step_finished(self) -> None:
        self._progress_at = time.monotonic()

    def loop_ended(self) -> None:
        self._in_loop = False

    def cancel(self) -> None:
        """Stops watching (the process is not going to wait for anything any more)."""
        self._cancelled.set()

    def stop_requested(self) -> None:
        """Called for each SIGTERM; the first one starts the watch."""
        if self._read_beats is None or self._hosts < 2 or self._started.is_set():
            return
        self._started.set()
        threading.Thread(target=self._watch, name="stop-deadline", daemon=True).start()

    def _watch(self) -> None:
        started = time.monotonic()
        changed: dict[int, tuple[str, float]] = {}  # host -> (its value, when it last changed)
        while not self._cancelled.is_set():
            try:
                beats = _bounded(self._read_beats, self._kv_timeout_s)
            except LeftTheService:
                return
            except Exception as err:
                if time.monotonic() - self._progress_at > self._stall_s:
                    self._give_up([COORDINATOR], f"the coordinator did not answer ({err})")
                    return
            else:
                gone = self._gone(beats, changed, started)
                if gone and time.monotonic() - self._progress_at > self._stall_s:
                    self._give_up(sorted(gone), "; ".join(sorted(set(gone.values()))))
                    return
            self._cancelled.wait(self._poll_s)

    def _gone(self, beats: Mapping[str, str], changed: dict[int, tuple[str, float]],
              started: float) -> dict[int, str]:
        """Peers that are gone, each with why."""
        now = time.monotonic()
        gone = {}
        for host in range(self._hosts):
            if host == self._host:
                continue
            value = beats.get(f"{KEY_PREFIX}{host}", "")
            if host not in changed or changed[host][0] != value:
                changed[host] = (value, now if host in changed else started)
            if value != DONE and now - changed[host][1] > self._peer_silence_s:
                gone[host] = f"no beat for {self._peer_silence_s:g} s"
        return gone

    def _give_up(self, hosts: list[int], why: str) -> None:
        if self._in_loop:
            why = f"{why}; no step finished for {self._stall_s:g} s after a stop (SIGTERM)"
        else:
            why = f"{why}; a stop (SIGTERM) came after the training loop ended"
        print(lost_hosts_line(self._host, hosts, why), file=sys.stderr, flush=True)
        sys.stdout.flush()
        self._exit(EXIT_RESTARTABLE)
