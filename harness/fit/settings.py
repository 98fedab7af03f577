"""`--search settings`: the fastest setting that fits a target, over the FSDP size (every
divisor of a slice's devices), the remat policy (none, dots, offload where the target's
devices have pinned host memory, full) and the batch, no smaller than the requested
global batch (`--batch_size`: a team's batch is part of its recipe, so a setting that
only fits a smaller one is out of memory; its search stops at the first refusal there).

"Fastest" is the best step-time bound per sample (harness/fit/roofline.py: the larger of
the executed FLOPs, remat's recompute included, over peak FLOP/s, and the state's HBM
traffic over HBM bandwidth, per device) at each setting's largest batch that fits, found
by harness/fit/search.py: compute per sample is the same at any batch and the HBM part
per sample falls as the batch grows, so a setting is at its fastest there. Ties go to
less HBM time per sample, then to the larger batch.

Remat offload ranks after every setting that fits without it. It recomputes what dots
does and also sends its saved activations to pinned host memory and back every step
(100m on v4-8 at its largest batch: 43.58 GiB per device, docs/fit.md), traffic the
bound cannot price: Cloud TPU publishes no host-link bandwidth. By the bound alone it
"won" by fitting a larger batch at the same compute per sample; so it wins only where
nothing without host traffic fits.

Settings are tried in order of recompute (none; dots and offload; full), a level at a
time, the level's settings side by side in the pool. Once the best so far is
compute-bound and keeps everything on the device, its bound is its level's compute per
sample, which no level with more recompute can beat: those are listed as not compiled.
The bound knows nothing of collectives or of batches too small to keep the MXUs busy: it
ranks settings by what they cannot beat, not by what they will do.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from typing import Any

from harness.config import TrainConfig, load_preset
from harness.config.fields import settings as all_settings
from harness.fit.compile import CompileOutcome
from harness.fit.economics import Assumptions
from harness.fit.libtpu import topology_devices
from harness.fit.pool import CompilePool
from harness.fit.report import CompileCount, FitReport
from harness.fit.roofline import StepTimeBound
from harness.fit.runner import prepare, report_of, step_bound
from harness.fit.sweep import Unit, run_units
from harness.fit.topology import Target, resolve

LEVELS = (("none",), ("dots", "offload"), ("full",))   # by how much the backward pass recomputes
FITS, OUT_OF_MEMORY, NOT_COMPILED = "fits", "out of memory", "not compiled"


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def remat_levels(target: Target) -> list[tuple[str, ...]]:
    """The policies to try by level; offload only where the devices have pinned host memory."""
    kinds = {memory.kind for memory in topology_devices(target)[0].addressable_memories()}
    return [tuple(p for p in level if p != "offload" or "pinned_host" in kinds) for level in LEVELS]


@dataclasses.dataclass(frozen=True)
class SettingResult:
    fsdp: int
    remat: str
    status: str                     # FITS | OUT_OF_MEMORY | NOT_COMPILED
    largest: int | None = None      # the largest batch that fits
    proven: bool = False
    bound: StepTimeBound | None = None   # at `largest`
    compiles: int = 0

    @property
    def per_sample_s(self) -> float | None:
        return None if self.bound is None else self.bound.seconds / self.largest

    @property
    def offloads(self) -> bool:
        """Moves activations over the host link every step, which the bound does not price."""
        return self.remat == "offload"

    def sort_key(self) -> tuple:
        order = {FITS: 0, OUT_OF_MEMORY: 1, NOT_COMPILED: 2}[self.status]
        if self.bound is None:
            return (order, self.offloads, 0.0, 0.0, 0, -self.fsdp, self.remat)
        return (order, self.offloads, self.per_sample_s, self.bound.memory_s / self.largest, -self.largest,
                -self.fsdp, self.remat)

    def to_dict(self) -> dict[str, Any]:
        return {"fsdp_devices": self.fsdp, "remat": self.remat, "status": self.status, "largest_batch": self.largest,
                "proven": self.proven, "compiles": self.compiles,
                "step_time_bound_s": None if self.bound is None else self.bound.seconds,
                "limited_by": None if self.bound is None else self.bound.limited_by,
                "bound_per_sample_s": self.per_sample_s}


@dataclasses.dataclass(frozen=True)
class SettingsSearch:
    target: Target
    requested_batch: int              # the smallest global batch a setting must take
    results: list[SettingResult]      # ranked, the winner first
    report: FitReport | None          # the winner at its largest batch; None if nothing fits
    command: list[str] | None         # harness-train with the winner's settings
    outcomes: list[CompileOutcome]    # every compile it took

    @property
    def fits(self) -> bool:
        return self.report is not None

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "settings", "target": self.target.product, "requested_batch": self.requested_batch,
                "winner": self.results[0].to_dict() if self.fits else None,
                "command": None if self.command is None else shlex.join(self.command),
                "settings": [r.to_dict() for r in self.results],
                "report": None if self.report is None else self.report.to_dict()}


def train_command(config: TrainConfig, preset: str | None) -> list[str]:
    """`harness-train` with every setting that differs from the preset (or the defaults),
    except the TPU target, which training takes from the devices it finds."""
    base = load_preset(preset) if preset else TrainConfig()
    command = ["harness-train"] + (["--config", preset] if preset else [])
    for row in all_settings():
        value = config.setting(row.flat)
        if row.path[0] == "tpu" or value == base.setting(row.flat):
            continue
        if row.kind == "bool":
            command.append(f"--{row.flat}" if value else f"--no_{row.flat}")
        else:
            command += [f"--{row.flat}", str(value)]
    return command


def _result(unit: Unit, prepared, fsdp: int, remat: str) -> tuple[SettingResult, CompileOutcome | None]:
    search = unit.search.result()
    compiles = sum(not o.cached for o in unit.outcomes)
    if search.largest is None:
        return SettingResult(fsdp, remat, OUT_OF_MEMORY, proven=search.proven, compiles=compiles), None
    outcome = next(o for o in unit.outcomes if o.batch_size == search.largest)
    bound = step_bound(prepared, search.largest, (outcome.cost or {}).get("flops"))
    return SettingResult(fsdp, remat, FITS, search.largest, search.proven, bound, compiles), outcome


def search_settings(config: TrainConfig, pool: CompilePool, *, max_compiles: int, assumptions: Assumptions,
                    preset: str | None, prune: bool = True) -> SettingsSearch:
    """Level by level over `pool`; UsageError for bad input before any compile.
    `prune=False` compiles every level (the brute force the tests hold the search to)."""
    started = time.perf_counter()
    target = resolve(config.tpu.topology, config.tpu.chip_config, config.mesh.num_slices)
    results: list[SettingResult] = []
    outcomes: list[CompileOutcome] = []
    winner: tuple[SettingResult, Unit, Any, CompileOutcome] | None = None
    for level in remat_levels(target):
        candidates = [(fsdp, remat) for remat in level for fsdp in divisors(target.devices_per_slice)]
        if prune and winner is not None and not winner[0].offloads and winner[0].bound.limited_by.startswith("compute"):
            results += [SettingResult(fsdp, remat, NOT_COMPILED) for fsdp, remat in candidates]
            continue
        prepared = [prepare(config.replace(fsdp_devices=fsdp, remat=remat)) for fsdp, remat in candidates]
        units = [p.unit(search=True, max_compiles=max_compiles, compile_requested=False, at_least_requested=True)
                 for p in prepared]
        run_units(pool, units)
        outcomes += [o for unit in units for o in unit.outcomes]
        for (fsdp, remat), p, unit in zip(candidates, prepared, units, strict=True):
            result, outcome = _result(unit, p, fsdp, remat)
            results.append(result)
            if outcome is not None and (winner is None or result.sort_key() < winner[0].sort_key()):
                winner = (result, unit, p, outcome)
    results.sort(key=SettingResult.sort_key)
    if winner is None:
        return SettingsSearch(target, config.data.batch_size, results, None, None, outcomes)
    result, unit, p, outcome = winner
    chosen = p.config.replace(batch_size=result.largest)
    compiles = CompileCount.of(outcomes, workers=pool.workers, worker_peak_rss_mb=dict(pool.peak_rss_mb))
    report = report_of(prepare(chosen), Unit(chosen, unit.search, outcome=outcome), assumptions, compiles=compiles,
                       wall_seconds=time.perf_counter() - started)
    return SettingsSearch(target, config.data.batch_size, results, report, train_command(chosen, preset), outcomes)
