"""Hears about a checkpoint save that failed in orbax's background thread.

orbax runs an async save's writes and its commit in a background thread. When they
fail, it logs the error (absl, ERROR, with the exception attached) and keeps it until
this host's next save, while the other hosts wait for this one in the commit barrier
for up to `--checkpoint_timeout` seconds. Listening for that record lets the loop fail
this host at the next step instead, so the watchdog names it to the others at once.

Why not orbax's public `CheckpointManager.check_for_errors()`: in the pinned 0.12.8 the
manager's own finalize thread takes the error out of the checkpointer (its
`wait_until_finished` raises and clears it) within milliseconds, so `check_for_errors()`
sees it only when it happens to ask in that window (polled every 10 ms in a real failing
save: missed in most runs, caught in one suite run of 2026-12-06); the error then waits
in that thread, which on a pod sits in a barrier with the other hosts.

Only this store's saves count: a record is taken when it is orbax's "background save
thread" failure for a step directory directly under the store's directory. Another
store's failed save, or an error logged while restoring, is not this store's failed save.
The record's shape is orbax's (0.12.x `_thread_func` in async_checkpointer.py).
"""

from __future__ import annotations

import logging
import os
import re

ORBAX_PATH_PART = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"
# The message orbax logs (with the exception attached) when a background save fails.
FAILED_SAVE = re.compile(r"in background save thread, directory: (?P<directory>.+)$")


class FailedSaveListener(logging.Handler):
    """Keeps the first exception orbax logs for a failed background save of a step under
    `directory`; attach it while saves run."""

    def __init__(self, directory: str) -> None:
        super().__init__(level=logging.ERROR)
        self.directory = _normalized(directory)
        self.failure: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is not None or not record.exc_info or record.exc_info[1] is None \
                or ORBAX_PATH_PART not in record.pathname:
            return
        match = FAILED_SAVE.search(record.getMessage())
        if match and _normalized(os.path.dirname(match.group("directory").strip())) == self.directory:
            self.failure = record.exc_info[1]

    def attach(self) -> "FailedSaveListener":
        logging.getLogger("absl").addHandler(self)
        return self

    def detach(self) -> None:
        logging.getLogger("absl").removeHandler(self)


def _normalized(directory: str) -> str:
    """gs:// paths as they are (no trailing slash), local ones absolute."""
    return directory.rstrip("/") if directory.startswith("gs://") else os.path.abspath(directory)
