"""What a host measured, as plain records: every check on every host yields one
`Observation` per row of the report, and a host's `HostReport` carries them (with the
facts the consistency gate compares, its code files' digests and the raw interconnect
timings) to process 0.

Statuses: PASS, WARN, FAIL, and SKIP (not run; `detail` says why).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

from harness.errors import error_line

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
STATUSES = (PASS, WARN, FAIL, SKIP)
_SEVERITY = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}

# Report rows, in the order a run meets them.
RENDEZVOUS = "rendezvous"
CONSISTENCY = "consistency"
DEVICES = "devices"
HOST_SPEED = "host speed"
INTERCONNECT = "interconnect"
STORAGE = "storage"
THROUGHPUT = "storage throughput"
ROUND_TRIP = "checkpoint round trip"
DRY_RUN = "dry run"
ROWS = (RENDEZVOUS, CONSISTENCY, DEVICES, HOST_SPEED, INTERCONNECT, STORAGE, THROUGHPUT, ROUND_TRIP, DRY_RUN)


def worst(statuses: list[str]) -> str:
    """The overall status: FAIL over WARN over PASS; SKIP only if nothing ran."""
    return max(statuses, key=_SEVERITY.__getitem__, default=SKIP)


@dataclasses.dataclass(frozen=True)
class Observation:
    """One host's cell of one row: `value` is the short text of the table, `detail`
    the full sentence for the page, `metrics` the numbers for preflight.json."""

    row: str
    status: str
    value: str = ""
    detail: str = ""
    seconds: float = 0.0
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Timing:
    """One timed collective on one host: seconds from leaving the barrier to calling
    the collective (`arrive_s`) and to holding its result (`done_s`), one value per
    repeat."""

    collective: str
    axis: str
    axis_size: int
    nbytes: int
    arrive_s: tuple[float, ...]
    done_s: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class HostReport:
    host: int
    hostname: str
    pid: int
    facts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    observations: tuple[Observation, ...] = ()
    timings: tuple[Timing, ...] = ()
    code_files: tuple[tuple[str, str], ...] = ()  # (label, digest) of every code file (code_tree.py)

    def observation(self, row: str) -> Observation | None:
        return next((o for o in self.observations if o.row == row), None)

    def with_observations(self, *observations: Observation) -> HostReport:
        return dataclasses.replace(self, observations=self.observations + observations)


def skipped(row: str, short: str, why: str) -> Observation:
    return Observation(row, SKIP, short, why)


def timed(row: str, measure: Callable[[], Observation]) -> Observation:
    """Runs `measure`, filling in its duration; an exception becomes a FAIL naming it,
    so one broken check never stops the others (or desynchronizes the hosts)."""
    started = time.perf_counter()
    try:
        observation = measure()
    except Exception as err:  # a check's own failure is a result, whatever raised
        observation = Observation(row, FAIL, "error", error_line(err))
    return dataclasses.replace(observation, seconds=round(time.perf_counter() - started, 6))


