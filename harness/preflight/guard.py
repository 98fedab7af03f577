"""Time bounds. Every check runs inside a `Deadline`; host-local work also runs through
`bounded`, so a hung write or compile becomes a FAIL for that host while the others go
on. A collective cannot be abandoned that way (the other hosts would wait in it), so
when a stage's deadline passes the process gives up: it names the stage and the hosts
furthest behind (each host records how far it got in the coordination service's
key-value store, `Progress`), process 0 first writes the report it has, and it exits 1.
A host that dies or freezes is named sooner by the harness's watchdog
(harness/runtime/watchdog.py), which runs beside the checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from harness.preflight.results import FAIL, Observation

KV_TIMEOUT_S = 5.0


def bounded(row: str, work: Callable[[], Observation], timeout_s: float) -> Observation:
    """`work()` on a daemon thread, or FAIL if it has not finished in `timeout_s` (the
    thread is left behind; it does nothing collective)."""
    box: list[Observation] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(work())
        except Exception as err:  # reported by the caller like any check failure
            errors.append(err)

    thread = threading.Thread(target=target, name=f"preflight {row}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if errors:
        raise errors[0]
    if not box:
        return Observation(row, FAIL, f"no result in {timeout_s:g} s", f"did not finish within {timeout_s:g} s "
                                                                      f"(--check_timeout)")
    return box[0]


def call_bounded(call: Callable[[], Any]) -> Any:
    """A key-value call that gives up after KV_TIMEOUT_S (a dead coordinator never answers)."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(call()), name="preflight kv", daemon=True)
    thread.start()
    thread.join(KV_TIMEOUT_S)
    return box[0] if box else None


class Progress:
    """Where each host is: one key per host in the coordination service, holding how
    many stages it has entered and the current one's name."""

    def __init__(self, run_id: str, host: int, num_hosts: int, client: Any):
        self._prefix = f"podharness/preflight/{run_id}/stage/"
        self._host = host
        self._num_hosts = num_hosts
        self._client = client
        self._entered = 0

    def enter(self, stage: str) -> None:
        self._entered += 1
        if self._client is not None:
            key, value = f"{self._prefix}{self._host}", f"{self._entered} {stage}"
            call_bounded(lambda: self._client.key_value_set(key, value, allow_overwrite=True))

    def laggards(self) -> tuple[list[int], dict[int, str]]:
        """The hosts furthest behind (none when all are at the same stage), and where
        every host is ("unknown" for a host that never said, or a store that did not answer)."""
        if self._client is None:
            return [], {}
        entries = call_bounded(lambda: dict(self._client.key_value_dir_get(self._prefix))) or {}
        position, where = {}, {}
        for key, value in entries.items():
            count, _, stage = value.partition(" ")
            host = int(key.rsplit("/", 1)[1])
            position[host], where[host] = int(count), stage
        hosts = range(self._num_hosts)
        reached = {h: position.get(h, 0) for h in hosts}
        where = {h: where.get(h, "unknown") for h in hosts}
        if len(set(reached.values())) == 1:
            return [], where
        lowest = min(reached.values())
        return [h for h in hosts if reached[h] == lowest], where


def barrier(timeout_s: float) -> bool:
    """Every host passes it, or False after `timeout_s` (a host gone after the last
    exchange); the collective runs on a daemon thread so this process can still exit."""
    from harness.runtime.checkpoint import all_hosts_agree

    passed = threading.Event()

    def wait() -> None:
        try:
            all_hosts_agree(True)
        except Exception:  # a lost peer: the caller reports it by the missing pass
            return
        passed.set()

    threading.Thread(target=wait, name="preflight barrier", daemon=True).start()
    return passed.wait(timeout_s)


def silent_hosts(client: Any, me: int, num_hosts: int, *, watch_s: float | None = None) -> list[int]:
    """The hosts whose watchdog heartbeat (harness/runtime/watchdog.py) stands still for
    `watch_s` (default two beats); for naming them in the report once the watchdog has
    found one."""
    from harness.runtime.watchdog import BEAT_S, DONE, KEY_PREFIX

    def beats() -> dict[str, str]:
        return call_bounded(lambda: dict(client.key_value_dir_get(KEY_PREFIX))) or {}

    before = beats()
    time.sleep(2 * BEAT_S if watch_s is None else watch_s)
    after = beats()
    return [h for h in range(num_hosts) if h != me and after.get(f"{KEY_PREFIX}{h}") != DONE
            and after.get(f"{KEY_PREFIX}{h}") == before.get(f"{KEY_PREFIX}{h}")]


class Deadline:
    """`with Deadline(row, seconds, on_expired):` calls `on_expired(row)` from a timer
    thread if the block is still running after `seconds` (it is expected to exit)."""

    def __init__(self, row: str, seconds: float, on_expired: Callable[[str], None]):
        self._timer = threading.Timer(seconds, on_expired, args=(row,))
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
