"""Keeping a failed checkpoint read to one line.

When a storage read fails, the harness reports it in one line (a usage error, damage,
or CheckpointUnreadableError). Left alone, the libraries underneath would bury that
line: gcsfs and fsspec log every retry and the final failure with tracebacks, and after
orbax gives up on a restore, tensorstore reads still in flight report errors of their
own. These helpers silence exactly that, while the reads run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

# The storage clients' loggers; their children inherit the level.
STORAGE_CLIENT_LOGGERS = ("gcsfs", "fsspec", "google.auth")


@contextlib.contextmanager
def quiet_storage_clients() -> Iterator[None]:
    """Silences the storage clients' loggers while the block runs."""
    levels = silence_storage_clients()
    try:
        yield
    finally:
        restore_levels(levels)


def silence_storage_clients() -> dict[str, int]:
    """Silences the storage clients' loggers; returns their levels for `restore_levels`."""
    levels = {name: logging.getLogger(name).level for name in STORAGE_CLIENT_LOGGERS}
    for name in levels:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    return levels


def restore_levels(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def quiet_reads_of_failed_restores() -> None:
    """If orbax gives up on a checkpoint, tensorstore reads that were still in flight
    finish on the event loop orbax already closed; each then reports
    "RuntimeError: Event loop is closed" as unraisable, and its unread read tasks are
    logged by asyncio at exit: dozens of traceback lines that bury the one-line
    explanation. Drop exactly those; pass everything else on. Installed once."""
    previous = sys.unraisablehook
    if getattr(previous, "harness_quiet", False):
        return

    def hook(unraisable: "sys.UnraisableHookArgs") -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.harness_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(drop_orphaned_restore_reads)


def drop_orphaned_restore_reads(record: logging.LogRecord) -> bool:
    """The same after-effect through asyncio's logger: orbax's read tasks of a failed
    restore are garbage-collected with their errors unread."""
    message = record.getMessage()
    return not ("Task exception was never retrieved" in message and "async_deserialize" in message)
