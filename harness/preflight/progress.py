"""Process 0's running account of a preflight, so a long one shows where it is: after
each exchange of results, one line for every check the whole pod has just finished,
with its verdict across the hosts and the slowest host's time.

    harness-preflight: check devices: PASS on 2 host(s) (slowest 0.41 s)
    harness-preflight: check interconnect: FAIL on host 1 of 2: straggler (slowest 5.32 s)
    harness-preflight: check dry run: SKIP (not selected)

A check is finished when every host's report has its cell; the verdict is judge.py's,
the same one the final table shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO

from harness.preflight.judge import Report
from harness.preflight.results import PASS, ROWS, SKIP, HostReport, worst

PROG = "harness-preflight"


def check_line(report: Report, row: str) -> str:
    """One check's line: its worst status across the hosts, the hosts that have it
    (when not every host passed) with the first one's short reason, the slowest time."""
    cells = report.cells[row]
    status = worst([cell.status for cell in cells.values()])
    if status == SKIP:
        return f"{PROG}: check {row}: SKIP ({next(iter(cells.values())).value})"
    slowest = f"(slowest {max(cell.seconds for cell in cells.values()):.2f} s)"
    if status == PASS:
        return f"{PROG}: check {row}: PASS on {len(cells)} host(s) {slowest}"
    named = [host for host, cell in cells.items() if cell.status == status]
    hosts = f"host {named[0]}" if len(named) == 1 else f"hosts {', '.join(map(str, named))}"
    return f"{PROG}: check {row}: {status} on {hosts} of {len(cells)}: {cells[named[0]].value} {slowest}"


class CheckLines:
    """Prints each check once, as soon as every host has reported it (on process 0)."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._shown: set[str] = set()

    def show(self, received: Mapping[int, HostReport | str], report: Report) -> None:
        """`received` from an exchange, and `report`, judge.py's verdict on it."""
        for row in ROWS:
            finished = all(isinstance(item, str) or item.observation(row) is not None for item in received.values())
            if row not in self._shown and finished:
                self._shown.add(row)
                print(check_line(report, row), file=self._stream, flush=True)
