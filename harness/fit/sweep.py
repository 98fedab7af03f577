"""Many compiles over one pool: each unit (one setting on one target) compiles its
requested batch and, optionally, searches for its largest batch; units interleave, so a
worker that would wait on one unit's search compiles another's.

A search is a chain (each probe depends on the last), and its probes are mostly
refusals that take seconds, so they go ahead of the requested batches, which take
minutes when they fit: the chains finish while the long compiles run beside them.
"""

from __future__ import annotations

import dataclasses

from harness.config import TrainConfig
from harness.fit.compile import CompileOutcome
from harness.fit.pool import CompilePool
from harness.fit.search import FAR_FACTOR, BatchSearch, probe_of


@dataclasses.dataclass
class Unit:
    config: TrainConfig
    search: BatchSearch | None = None
    note: dict = dataclasses.field(default_factory=dict)   # for progress: hbm_bytes, settings
    compile_requested: bool = True   # False: only the search compiles (harness/fit/settings.py)
    outcome: CompileOutcome | None = None      # the requested batch's
    outcomes: list[CompileOutcome] = dataclasses.field(default_factory=list)  # every compile, in order


def new_search(batch_size: int, *, step: int, hbm_bytes: int, max_compiles: int, base_bytes: int,
               requested: bool = True, at_least_requested: bool = False) -> BatchSearch:
    """A search from 16x `batch_size`; `requested`: that batch compiles beside it;
    `at_least_requested`: no answer below `batch_size` (a setting that cannot take it is
    out of memory), else down to one sample per device."""
    return BatchSearch(step=step, hbm_bytes=hbm_bytes, max_compiles=max_compiles, start=FAR_FACTOR * batch_size,
                       requested=batch_size if requested else None, base_bytes=base_bytes,
                       floor=batch_size if at_least_requested else None)


def run_units(pool: CompilePool, units: list[Unit]) -> None:
    """Fills each unit's `outcome`, `outcomes` and search; returns when all are done."""
    jobs: dict[int, tuple[Unit, bool]] = {}

    def feed(unit: Unit) -> None:
        batch = unit.search.next_batch() if unit.search is not None else None
        if batch is not None:
            jobs[pool.submit(unit.config.replace(batch_size=batch), census=not unit.compile_requested, priority=0,
                             note=unit.note)] = (unit, False)

    for unit in units:
        if unit.compile_requested:
            jobs[pool.submit(unit.config, census=True, priority=1, note=unit.note)] = (unit, True)
        if pool.parallel or not unit.compile_requested:
            feed(unit)
    while jobs:
        job, outcome = pool.next_finished()
        unit, requested = jobs.pop(job)
        unit.outcomes.append(outcome)
        if requested:
            unit.outcome = outcome
        if unit.search is not None:
            unit.search.record(probe_of(outcome))
            feed(unit)
