"""A checkpoint plan for a target: what each host writes per save, how long a save takes
at a write throughput, and how often to save so that failures cost the least time.

Bytes come from the state's shapes and shardings on the target's devices (parameters,
optimizer state, step counter and rng key: what harness-train's checkpoint holds), split
the way orbax-checkpoint 0.12.8 writes them: each distinct shard once; a shard that R
devices hold is split over those replicas along its first dimension R divides
(replica-parallel saving, orbax's default off GPU: _src/serialization/replica_slices.py),
and where none does, replica 0 (the first such device in mesh order) writes it whole. A
host writes its devices' parts. Every host saves at once, so the host with the most
bytes sets the save time: its bytes over its write throughput, in MB/s with
1 MB = 10^6 B, the unit harness-preflight's storage throughput reports.

The interval is Young's, tau = sqrt(2 C M), for save time C and mean time between
failures M (of the whole slice). The expected fraction of time lost is C / tau to saves
(all of a synchronous save; an async save stops training only for the copy off the
device, so this is its upper bound) plus tau / (2 M) to rework (a failure loses half an
interval on average); at tau the two are equal and sum to sqrt(2 C / M). Restart time
is not in it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from harness.errors import UsageError

MB = 1e6
THROUGHPUT_CHECK = "storage throughput"   # harness/preflight's check name in preflight.json


@dataclasses.dataclass(frozen=True)
class CheckpointBytes:
    total: int                   # the state once
    per_host: dict[int, int]     # host (process index) -> bytes it writes per save

    @property
    def largest_host(self) -> int:
        return max(self.per_host.values(), default=0)


def _index_key(index: tuple[slice, ...]) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def leaf_bytes_by_device(leaf: Any) -> dict[Any, int]:
    """Bytes each device writes of one sharded ShapeDtypeStruct (orbax's replica rule)."""
    shard_shape = leaf.sharding.shard_shape(leaf.shape)
    shard_bytes = math.prod(shard_shape) * leaf.dtype.itemsize
    holders: dict[tuple, list] = {}
    for device, index in leaf.sharding.devices_indices_map(leaf.shape).items():
        holders.setdefault(_index_key(index), []).append(device)
    written: dict[Any, int] = {}
    for devices in holders.values():
        replicas = len(devices)
        split = shard_bytes > 0 and replicas > 1 and any(size % replicas == 0 for size in shard_shape)
        for replica, device in enumerate(devices):
            if split:
                written[device] = written.get(device, 0) + shard_bytes // replicas
            elif replica == 0:
                written[device] = written.get(device, 0) + shard_bytes
    return written


def checkpoint_bytes(state: Any) -> CheckpointBytes:
    """`state`: the abstract train state with the target mesh's shardings."""
    import jax

    total, per_host = 0, {}
    for leaf in jax.tree.leaves(state):
        total += math.prod(leaf.shape) * leaf.dtype.itemsize
        for device in leaf.sharding.device_set:
            per_host.setdefault(device.process_index, 0)
        for device, nbytes in leaf_bytes_by_device(leaf).items():
            per_host[device.process_index] += nbytes
    return CheckpointBytes(total, dict(sorted(per_host.items())))


@dataclasses.dataclass(frozen=True)
class StorageThroughput:
    write_mb_per_s: float    # per host
    source: str


def throughput_from_preflight(path: str) -> StorageThroughput:
    """The slowest host's write MB/s from a harness-preflight report (hosts write at once,
    as a save does); the pod's figure over its hosts if the cells lack it."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--preflight_json {path}: cannot read it ({type(err).__name__}: {err})") from None
    cells = [cell for check in report.get("checks") or [] if check.get("check") == THROUGHPUT_CHECK
             for cell in check.get("cells") or [] if "write_mb_per_s" in (cell.get("metrics") or {})]
    if cells:
        slowest = min(cells, key=lambda c: c["metrics"]["write_mb_per_s"])
        return StorageThroughput(slowest["metrics"]["write_mb_per_s"],
                                 f"{path}: the slowest of {len(cells)} host(s), host {slowest['host']}")
    pod = report.get("storage_throughput")
    if pod and pod.get("hosts") and pod.get("write_mb_per_s"):
        return StorageThroughput(pod["write_mb_per_s"] / pod["hosts"], f"{path}: the pod's figure over its "
                                                                      f"{pod['hosts']} host(s)")
    raise UsageError(f"--preflight_json {path} has no storage throughput (run harness-preflight with its storage "
                     f"checks, or pass --storage_mbps)")


@dataclasses.dataclass(frozen=True)
class SavePlan:
    bytes: CheckpointBytes
    throughput: StorageThroughput | None
    mtbf_s: float
    step_s: float | None     # the estimated step time, for the interval in steps

    @property
    def save_s(self) -> float | None:
        if self.throughput is None:
            return None
        return self.bytes.largest_host / (self.throughput.write_mb_per_s * MB)

    @property
    def interval_s(self) -> float | None:
        return None if self.save_s is None else math.sqrt(2 * self.save_s * self.mtbf_s)

    @property
    def lost_to_saves(self) -> float | None:
        return None if not self.interval_s else self.save_s / self.interval_s

    @property
    def lost_to_rework(self) -> float | None:
        return None if self.interval_s is None else self.interval_s / (2 * self.mtbf_s)

    @property
    def interval_steps(self) -> int | None:
        if self.interval_s is None or not self.step_s:
            return None
        return max(1, round(self.interval_s / self.step_s))

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes_total": self.bytes.total, "bytes_per_host": self.bytes.per_host,
            "bytes_largest_host": self.bytes.largest_host,
            "write_mb_per_s_per_host": None if self.throughput is None else self.throughput.write_mb_per_s,
            "throughput_source": None if self.throughput is None else self.throughput.source,
            "save_seconds": self.save_s, "mtbf_seconds": self.mtbf_s, "interval_seconds": self.interval_s,
            "interval_steps": self.interval_steps, "step_seconds_estimate": self.step_s,
            "lost_fraction_saves": self.lost_to_saves, "lost_fraction_rework": self.lost_to_rework,
        }
