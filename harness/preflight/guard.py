"""Time bounds. Every check runs inside a `Deadline`; host-local work also runs through
`bounded`, so a hung write or compile becomes a FAIL for that host while the others go
on. A collective cannot be abandoned that way (the other hosts would wait in it), so
when a stage's deadline passes the process gives up: it says which stage and which
hosts had not reached it (each host records its stage in the coordination service's
key-value store, `Progress`), process 0 first writes the report it has, and it exits 1.
A host that dies or freezes is named sooner by the harness's watchdog
(harness/runtime/watchdog.py), which runs beside the checks.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

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


def _call_bounded(call: Callable[[], Any]) -> Any:
    """A key-value call that gives up after KV_TIMEOUT_S (a dead coordinator never answers)."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(call()), name="preflight kv", daemon=True)
    thread.start()
    thread.join(KV_TIMEOUT_S)
    return box[0] if box else None


class Progress:
    """Which check each host is in: one key per host in the coordination service."""

    def __init__(self, run_id: str, host: int, num_hosts: int, client: Any):
        self._prefix = f"podharness/preflight/{run_id}/stage/"
        self._host = host
        self._num_hosts = num_hosts
        self._client = client

    def enter(self, row: str) -> None:
        if self._client is not None:
            _call_bounded(lambda: self._client.key_value_set(f"{self._prefix}{self._host}", row, allow_overwrite=True))

    def behind(self, row: str) -> dict[int, str]:
        """Hosts not in `row` yet -> where they are (or "unknown")."""
        if self._client is None:
            return {}
        entries = _call_bounded(lambda: dict(self._client.key_value_dir_get(self._prefix))) or {}
        where = {int(key.rsplit("/", 1)[1]): value for key, value in entries.items()}
        return {h: where.get(h, "unknown") for h in range(self._num_hosts) if where.get(h) != row}


class Deadline:
    """`with Deadline(row, seconds, on_expired):` calls `on_expired(row)` from a timer
    thread if the block is still running after `seconds` (it is expected to exit)."""

    def __init__(self, row: str, seconds: float, on_expired: Callable[[str], None]):
        self._timer = threading.Timer(seconds, on_expired, args=(row,))
        self._timer.daemon = True

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
