"""Which pod should we pay for? One row per TPU target, ranked by the cost of 1,000 steps.

    harness-fit --config v5litepod-16 --model transformer --model_size 1b --compute_dtype bfloat16 \\
        --remat full --targets v5litepod-16,v5litepod-32,v6e-8,v4-32

Every target gets the same model, global batch and settings, so a step is the same work
on each and the cost of 1,000 steps compares them. FSDP keeps its size where it divides
a target's slice and spans the slice where it does not (the row says so); each target
takes its product's own chip config. With `--search settings` each target's row is
its fastest setting instead (harness/fit/settings.py), and the cost is per 1,000 steps
of the requested global batch, at that setting's cost per sample. All targets' compiles
share one pool of workers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from harness.config import TrainConfig
from harness.fit.economics import PRICES_AS_OF, Assumptions
from harness.fit.pool import CompilePool
from harness.fit.progress import CompileProgress, describe_settings
from harness.fit.report import CompileCount, FitReport
from harness.fit.runner import Prepared, prepare, report_of
from harness.fit.sweep import run_units
from harness.fit.topology import resolve


def target_config(config: TrainConfig, product: str) -> tuple[TrainConfig, str]:
    """`config` on `product`, FSDP over the whole slice if the given size does not divide it."""
    target = resolve(product, "", config.mesh.num_slices)
    fsdp = config.mesh.fsdp_devices
    if target.devices_per_slice % fsdp == 0:
        return config.replace(topology=product, chip_config=""), ""
    note = f"--fsdp_devices {fsdp} does not divide its {target.devices_per_slice} devices: FSDP over the slice"
    return config.replace(topology=product, chip_config="", fsdp_devices=target.devices_per_slice), note


@dataclasses.dataclass(frozen=True)
class TargetRow:
    report: FitReport          # the chosen setting's, at its batch
    note: str                  # how the setting differs from the one asked for, if it does
    usd_per_1000_steps: float | None   # of the requested global batch; None if nothing fits
    settings: dict[str, Any]

    @property
    def product(self) -> str:
        return self.report.target.product

    def to_dict(self) -> dict[str, Any]:
        target = self.report.target
        return {"product": self.product, "verdict": self.report.verdict, "settings": self.settings, "note": self.note,
                "chips": target.chips * target.num_slices, "hosts": target.hosts_per_slice * target.num_slices,
                "peak_bytes_per_chip": self.report.used_bytes, "hbm_bytes": self.report.memory.hbm,
                "step_time_bound_s": self.report.bound.seconds if self.report.bound else None,
                "step_time_estimate_s": self.report.cost.estimate_s if self.report.cost else None,
                "usd_per_1000_steps": self.usd_per_1000_steps,
                "largest_batch": self.report.search.largest if self.report.search else None,
                "checkpoint_plan": self.report.plan.to_dict() if self.report.plan else None}


@dataclasses.dataclass(frozen=True)
class Comparison:
    rows: list[TargetRow]      # ranked: those that fit by cost, then the rest
    batch_size: int
    assumptions: Assumptions
    compiles: CompileCount
    wall_seconds: float

    @property
    def any_fits(self) -> bool:
        return any(row.report.fits for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        a = self.assumptions
        return {
            "mode": "targets", "global_batch_size": self.batch_size,
            "ranking": [row.product for row in self.rows],
            "assumptions": {"mfu": a.mfu, "price_per_chip_hour": a.price_per_chip_hour, "prices_as_of": PRICES_AS_OF,
                            "mtbf_hours": a.mtbf_hours,
                            "write_mb_per_s_per_host": a.throughput.write_mb_per_s if a.throughput else None,
                            "throughput_source": a.throughput.source if a.throughput else None},
            "targets": [{**row.to_dict(), "report": row.report.to_dict()} for row in self.rows],
            "compiles": dataclasses.asdict(self.compiles), "wall_seconds": self.wall_seconds,
        }


def settings_of(report: FitReport) -> dict[str, Any]:
    return {"fsdp_devices": report.mesh.get("fsdp", 1), "remat": report.model["remat"],
            "batch_size": report.batch_size}


def row_of(report: FitReport, note: str, requested_batch: int) -> TargetRow:
    cost = None
    if report.fits and report.cost is not None:
        cost = report.cost.usd_per_1000_steps * requested_batch / report.batch_size
    return TargetRow(report, note, cost, settings_of(report))


def rank(rows: list[TargetRow]) -> list[TargetRow]:
    return sorted(rows, key=lambda r: (r.usd_per_1000_steps is None, r.usd_per_1000_steps or 0.0, r.product))


def compare_targets(config: TrainConfig, products: list[str], *, search: str, max_compiles: int,
                    progress: CompileProgress | None, workers: int, cache_dir: str, compile_timeout_s: float,
                    assumptions: Assumptions, preset: str | None = None) -> Comparison:
    """Every target's compiles over one pool; UsageError for bad input, before any compile.
    `search`: "batch" (the largest batch too), "settings" (each target's fastest setting)
    or "none"."""
    started = time.perf_counter()
    prepared: list[tuple[Prepared, str]] = []
    for product in products:
        target_cfg, note = target_config(config, product)
        prepared.append((prepare(target_cfg), note))
    if progress is not None:
        first = prepared[0][0]
        progress.begin(first.target, describe_settings(first.config.model, dict(first.mesh.shape)), first.hbm,
                       len(prepared) * (1 + max_compiles if search != "none" else 1))
    with CompilePool(workers, cache_dir, timeout_s=compile_timeout_s, progress=progress) as pool:
        if search == "settings":
            rows, outcomes = _fastest_rows(prepared, pool, max_compiles, assumptions, preset)
        else:
            units = [p.unit(search=search == "batch", max_compiles=max_compiles) for p, _ in prepared]
            run_units(pool, units)
            outcomes = [o for unit in units for o in unit.outcomes]
            rows = [row_of(report_of(p, unit, assumptions, compiles=None, wall_seconds=0.0), note,
                           config.data.batch_size) for (p, note), unit in zip(prepared, units, strict=True)]
        compiles = CompileCount.of(outcomes, workers=pool.workers, worker_peak_rss_mb=dict(pool.peak_rss_mb))
    return Comparison(rank(rows), config.data.batch_size, assumptions, compiles, time.perf_counter() - started)


def _fastest_rows(prepared: list[tuple[Prepared, str]], pool: CompilePool, max_compiles: int,
                  assumptions: Assumptions, preset: str | None) -> tuple[list[TargetRow], list]:
    """Each target's fastest setting (harness/fit/settings.py); where none fits, the
    requested setting's refusal."""
    from harness.fit.settings import search_settings

    rows, outcomes = [], []
    for p, _ in prepared:
        found = search_settings(p.config, pool, max_compiles=max_compiles, assumptions=assumptions, preset=preset)
        outcomes += found.outcomes
        if found.report is not None:
            winner = found.results[0]
            rows.append(row_of(found.report, f"fastest setting: fsdp {winner.fsdp}, remat {winner.remat}, "
                                             f"batch {winner.largest}", p.config.data.batch_size))
            continue
        unit = p.unit(search=False, max_compiles=0)
        run_units(pool, [unit])
        outcomes += unit.outcomes
        rows.append(row_of(report_of(p, unit, assumptions, compiles=None, wall_seconds=0.0),
                           "no setting fits", p.config.data.batch_size))
    return rows, outcomes
