"""Stand-ins for the two things the watchdog, the stop deadline and preflight's progress
talk to, so their logic runs on threads in the test process: the coordination service's
key-value store, and the process exit."""

from __future__ import annotations

import threading


class FakeKeyValueStore:
    """The key-value calls the harness makes, on a dict; `answering.clear()` makes every
    call block, as a coordinator that stopped answering does."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.answering = threading.Event()
        self.answering.set()

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        self.answering.wait()
        self.values[key] = value

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        self.answering.wait()
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class ExitRecorder:
    """An `exit_fn` that records the code instead of ending the test process."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.given = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.given.set()
