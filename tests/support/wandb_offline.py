"""Read back what an offline wandb run recorded, for tests.

wandb 0.31.0 has no public reader for offline runs. Its `run-<id>.wandb` file is a
LevelDB-style log: a 7-byte header (b":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`, where the crc
covers the type byte and the data and a record spans FIRST/MIDDLE/LAST chunks. Each
record is a `wandb.proto.wandb_internal_pb2.Record` (an internal module: wandb is
pinned for this).

    run = read_offline_run(sink.run_path)
    run.history_by_step[10]["loss"], run.summary, run.config, run.run_id
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclasses.dataclass
class OfflineRun:
    run_id: str
    config: dict[str, Any]
    history: list[dict[str, Any]]   # one row per logged step, with "_step"
    summary: dict[str, Any]
    artifacts: list[dict[str, Any]]  # {"name", "type", "files": {artifact path: local staged path}}

    @property
    def history_by_step(self) -> dict[int, dict[str, Any]]:
        return {row["_step"]: row for row in self.history}


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = _HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a wandb log (header {ident!r} {magic:#x} {version})")
    records, pending, pos = [], b"", _HEADER.size
    while pos + _CHUNK.size <= len(data):
        if _BLOCK - pos % _BLOCK < _CHUNK.size:  # a block's tail too short for a chunk is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if (crc, length, kind) == (0, 0, 0):
            break
        chunk = data[pos + _CHUNK.size : pos + _CHUNK.size + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: bad crc in the chunk at byte {pos}")
        pos += _CHUNK.size + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            records.append(wandb_internal_pb2.Record.FromString(pending))
    return records


def _put(target: dict[str, Any], item: Any) -> None:
    """Set `item.value_json` at `item.key`, or at the nested path `item.nested_key`."""
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def read_offline_run(run_path: Path) -> OfflineRun:
    """Parse `<run_path>/run-<id>.wandb`, `run_path` being an `offline-run-*` folder."""
    (log,) = Path(run_path).glob("run-*.wandb")
    run_id, config, history, summary, artifacts = "", {}, [], {}, []
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            for item in record.run.config.update:
                _put(config, item)
        elif kind == "config":
            for item in record.config.update:
                _put(config, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item)
            history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _put(summary, item)
        elif kind == "artifact":
            files = {entry.path: entry.local_path for entry in record.artifact.manifest.contents}
            artifacts.append({"name": record.artifact.name, "type": record.artifact.type, "files": files})
    return OfflineRun(run_id=run_id, config=config, history=history, summary=summary, artifacts=artifacts)
