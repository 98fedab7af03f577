"""What counts as a damaged checkpoint, and how a damaged step is set aside.

Only proven damage may make a resume skip a step: a part that is missing, a checksum
that differs, or bytes the storage stack itself calls corrupt. Anything else (storage
unavailable after its retries, a timeout, out of memory, permission denied) says
nothing about the checkpoint, and skipping on it would throw away good progress; the
resume stops instead (CheckpointUnreadableError, exit 42) and changes nothing.

How the pinned stack reports damage (found by corrupting real checkpoints on disk):
tensorstore raises ValueError whose message starts with its status code: `DATA_LOSS`
for a flipped byte or a torn OCDBT manifest ("Error decoding ..."), `OUT_OF_RANGE` for
a truncated data file, `NOT_FOUND` for a missing one; a torn JSON file (orbax's
`_METADATA`, the harness's metadata) raises JSONDecodeError; gcsfs raises
FileNotFoundError for a missing object. orbax wraps a failed shard read in a bare
`Exception(...) from err`, so the cause chain is followed to its root.

A damaged step is set aside by a small `DAMAGED` file in its directory, written by
host 0 (the checkpoint store is one of the two places host-0 decisions live): one
object on GCS, so it is there entirely or not at all, where a rename would be a
copy-and-delete of the whole step that can stop halfway. Later runs skip a marked step
without reading it; it is never deleted or pruned and never counts against `--keep`
(`KeepMarkedAndNewest`), and no run saves over it (its step number stays taken until
someone deletes the directory).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from typing import Sequence

from etils import epath

from harness.errors import error_line

MARKER = "DAMAGED"
DAMAGE_STATUS_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND")


def root_cause(err: BaseException) -> BaseException:
    """The end of `err`'s `raise ... from` chain: what actually failed."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def is_proven_damage(err: BaseException) -> bool:
    """True when `err` shows that a checkpoint's bytes are missing or corrupt."""
    cause = root_cause(err)
    if isinstance(cause, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError)):
        return True
    return str(cause).split(":", 1)[0].strip() in DAMAGE_STATUS_CODES


def describe(err: BaseException) -> str:
    """What failed, in one line: the root cause's type and first line."""
    return error_line(root_cause(err))


def read_marker(step_dir: epath.Path) -> str | None:
    """The reason recorded in a step's `DAMAGED` marker, or None if it has none."""
    marker = step_dir / MARKER
    if not marker.exists():
        return None
    return marker.read_text().strip() or "no reason recorded"


def write_marker(step_dir: epath.Path, reason: str) -> epath.Path:
    """Writes `step_dir/DAMAGED` saying when and why, atomically: a single object on GCS;
    locally a temporary file renamed into place. Touches nothing else."""
    marker = step_dir / MARKER
    text = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {reason}\n"
    if os.fspath(step_dir).startswith("gs://"):
        marker.write_text(text)
    else:
        partial = step_dir / f".{MARKER}.{uuid.uuid4().hex}"
        partial.write_text(text)
        os.replace(partial, marker)
    return marker


@dataclasses.dataclass
class KeepMarkedAndNewest:
    """orbax's pruning policy for the store: marked steps are always kept and do not
    count; of the others, the `keep` highest steps are kept. (orbax's own `LatestN`
    keeps the last `keep` in its list, which would count a marked step and, after a
    resume below it, delete the newest good one.) `marked` is the store's live set."""

    keep: int
    marked: set[int]

    def should_preserve(self, checkpoints: Sequence, *, context: object) -> list[bool]:
        del context
        good = sorted(info.step for info in checkpoints if info.step not in self.marked)
        kept = set(good[-self.keep:]) | self.marked
        return [info.step in kept for info in checkpoints]
