"""From every host's report to the pod's: one cell per check and host, the cross-host
verdicts (consistency, the all-reduce, late and slow hosts, storage throughput, the dry
run's step times) and the overall verdict.

Pure: the same reports give the same verdict on every host, which is how all hosts
agree on what to skip next (after a consistency FAIL no collective runs: hosts that
compile different programs could hang in one) without another message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from harness.preflight import consistency, devices, interconnect, stragglers
from harness.preflight.dry_run import judge_step_times
from harness.preflight.faults import Fault
from harness.preflight.interconnect import Measurement
from harness.preflight.options import PreflightOptions
from harness.preflight.results import (CONSISTENCY, DEVICES, DRY_RUN, FAIL, HOST_SPEED, INTERCONNECT, PASS,
                                       RENDEZVOUS, ROWS, SKIP, THROUGHPUT, HostReport, Observation, worst)
from harness.preflight.storage import PodThroughput, judge_throughput, pod_throughput


@dataclasses.dataclass(frozen=True)
class Abort:
    """The preflight stopped early: in `row`, for `reason`, naming `hosts` (maybe none)."""

    row: str
    reason: str
    hosts: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class PodContext:
    """What process 0 knows about the pod beyond the reports."""

    run_id: str
    num_processes: int
    preset: str | None
    coordinator_address: str | None
    mesh: Mapping[str, int]
    fault: Fault
    straggler_factor: float
    host_names: Mapping[int, str] = dataclasses.field(default_factory=dict)  # from the pod's metadata
    slow_host_factor: float = PreflightOptions.slow_host_factor


@dataclasses.dataclass(frozen=True)
class Report:
    context: PodContext
    hosts: tuple[int, ...]
    hostnames: Mapping[int, str]
    pids: Mapping[int, int]
    cells: Mapping[str, Mapping[int, Observation]]  # row -> host -> cell
    facts: Mapping[int, Mapping[str, str]]
    measurements: tuple[Measurement, ...]
    aborted: Abort | None
    throughput: PodThroughput | None = None  # every host's storage throughput together

    @property
    def verdict(self) -> str:
        return worst([cell.status for row in self.cells.values() for cell in row.values()] or [FAIL])

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == FAIL else 0

    def failures(self) -> list[tuple[str, int, Observation]]:
        return [(row, host, cell) for row in ROWS for host, cell in self.cells[row].items() if cell.status == FAIL]

    def summary(self) -> str:
        """One line: the verdict, and the failing hosts with the first reason each."""
        if self.verdict != FAIL:
            return f"{self.verdict}: {len(self.hosts)} host(s), every check passed"
        first: dict[int, tuple[str, Observation]] = {}
        for row, host, cell in self.failures():
            first.setdefault(host, (row, cell))
        named = "; ".join(f"host {host}: {row}: {cell.value}" for host, (row, cell) in sorted(first.items()))
        return f"FAIL: {named}"


def reported(received: Mapping[int, HostReport | str]) -> dict[int, HostReport]:
    return {host: r for host, r in received.items() if isinstance(r, HostReport)}


def same_program(received: Mapping[int, HostReport | str]) -> bool:
    """Every host reported and the consistency gate passed on all: collectives are safe."""
    reports = reported(received)
    if len(reports) != len(received):
        return False
    return all(cell.status == PASS for cell in consistency.judge(reports).values())


def all_passed(received: Mapping[int, HostReport | str], row: str) -> bool:
    reports = reported(received)
    return len(reports) == len(received) and all(
        (obs := r.observation(row)) is not None and obs.status == PASS for r in reports.values())


def judge(received: Mapping[int, HostReport | str], context: PodContext, *, abort: Abort | None = None,
          expected_hosts: Sequence[int] | None = None) -> Report:
    """The pod's report. `received`: per host its report or why it could not be read;
    hosts in `expected_hosts` that are not in `received` never reported at all."""
    hosts = tuple(sorted(set(expected_hosts or ()) | set(received)))
    reports = reported(received)
    cells: dict[str, dict[int, Observation]] = {row: {} for row in ROWS}
    for host in hosts:
        item = received.get(host)
        for row in ROWS:
            if item is None:
                cells[row][host] = Observation(row, SKIP, "not run", "this host never reported")
            elif isinstance(item, str):
                cells[row][host] = Observation(row, FAIL, "report unreadable", item)
            elif abort is not None and row == abort.row:
                cells[row][host] = item.observation(row) or Observation(row, SKIP, "interrupted",
                                                                        "the preflight stopped during this check")
            else:
                cells[row][host] = item.observation(row) or Observation(row, SKIP, "not reached",
                                                                        "the preflight stopped before this check")
    _judge_consistency(cells, reports)
    _judge_devices(cells, reports)
    found = _judge_interconnect(cells, reports, context.straggler_factor)
    cells[HOST_SPEED].update(stragglers.judge_speed(reports, context.slow_host_factor))
    cells[THROUGHPUT].update(judge_throughput(reports))
    cells[DRY_RUN].update(judge_step_times(reports, context.slow_host_factor))
    if abort is not None:
        _apply_abort(cells, abort, hosts)
    return Report(context, hosts, {h: r.hostname for h, r in reports.items()}, {h: r.pid for h, r in reports.items()},
                  cells, {h: r.facts for h, r in reports.items()}, tuple(found), abort, pod_throughput(reports))


def _judge_consistency(cells: dict[str, dict[int, Observation]], reports: Mapping[int, HostReport]) -> None:
    measured = {h: r for h, r in reports.items() if (o := r.observation(CONSISTENCY)) and o.status != SKIP}
    if not measured:
        return
    for host, verdict in consistency.judge(measured).items():
        local = cells[CONSISTENCY][host]
        status = FAIL if FAIL in (local.status, verdict.status) else verdict.status
        cells[CONSISTENCY][host] = dataclasses.replace(local if local.status == FAIL else verdict, status=status,
                                                       seconds=local.seconds)


def _judge_devices(cells: dict[str, dict[int, Observation]], reports: Mapping[int, HostReport]) -> None:
    for host, why in devices.judge_allreduce(reports).items():
        cell = cells[DEVICES][host]
        detail = f"{cell.detail}; {why}" if cell.status == FAIL else why
        value = cell.value if cell.status == FAIL else "all-reduce wrong"
        cells[DEVICES][host] = dataclasses.replace(cell, status=FAIL, value=value, detail=detail)


def _judge_interconnect(cells: dict[str, dict[int, Observation]], reports: Mapping[int, HostReport],
                        factor: float) -> list[Measurement]:
    judged, found = interconnect.judge(reports, factor)
    for host, cell in judged.items():
        local = cells[INTERCONNECT][host]
        if local.status != FAIL:
            cells[INTERCONNECT][host] = dataclasses.replace(cell, seconds=local.seconds)
    return found


def _apply_abort(cells: dict[str, dict[int, Observation]], abort: Abort, hosts: Sequence[int]) -> None:
    """The hosts the abort names FAIL in its row; with none named, every host that has
    no result in that row does."""
    row = cells[abort.row]
    targets = abort.hosts or [h for h in hosts if row[h].value == "interrupted"]
    for host in targets:
        row[host] = Observation(abort.row, FAIL, abort.reason[:120], abort.reason)


def rendezvous_failed(context: PodContext, cell_by_host: Mapping[int, Observation],
                      hostnames: Mapping[int, str], pids: Mapping[int, int]) -> Report:
    """The report when the pod never assembled: the rendezvous row only (from the roll
    call), every other check not run."""
    cells = {row: {} for row in ROWS}
    for host, cell in cell_by_host.items():
        cells[RENDEZVOUS][host] = cell
        for row in ROWS[1:]:
            cells[row][host] = Observation(row, SKIP, "not run", "the pod never assembled: no check could run")
    return Report(context, tuple(sorted(cell_by_host)), hostnames, pids, cells, {}, (), None)
