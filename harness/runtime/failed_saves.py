"""Hears about a checkpoint save that failed in orbax's background thread.

orbax runs an async save's writes and its commit in a background thread. When they
fail, it logs the error (absl, ERROR, with the exception attached) and keeps it until
this host's next save, while the other hosts wait for this one in the commit barrier
for up to `--checkpoint_timeout` seconds. Listening for that record lets the loop fail
this host at the next step instead, so the watchdog names it to the others at once.

The record's shape is orbax's (0.12.x `_thread_func` in async_checkpointer.py); the
soak test `test_pod_whose_save_fails_on_one_host_ends_promptly` fails if it changes.
"""

from __future__ import annotations

import logging
import os

ORBAX_PATH_PART = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"


class FailedSaveListener(logging.Handler):
    """Keeps the first exception orbax logs as an error; attach it while saves run."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.failure: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is None and record.exc_info and record.exc_info[1] is not None \
                and ORBAX_PATH_PART in record.pathname:
            self.failure = record.exc_info[1]

    def attach(self) -> "FailedSaveListener":
        logging.getLogger("absl").addHandler(self)
        return self

    def detach(self) -> None:
        logging.getLogger("absl").removeHandler(self)
