"""What harness-fit found, as one plain record: the verdict, memory by kind, the batch
search, FLOPs, collectives and the step-time bound. `fit.json` is this record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from harness.fit.census import KindCount
from harness.fit.compile import ArgumentBytes, CompileOutcome, OutOfMemory
from harness.fit.economics import StepCost
from harness.fit.plan import SavePlan
from harness.fit.roofline import StepTimeBound
from harness.fit.schema import SCHEMA_ID
from harness.fit.search import SearchResult
from harness.fit.topology import Target


@dataclasses.dataclass(frozen=True)
class MemoryByKind:
    """Per-device bytes. The argument kinds come from shapes and shardings; the rest is
    the compiler's `memory_analysis()` (absent when it ran out of memory)."""

    arguments: ArgumentBytes
    compiler_arguments: int | None
    temporaries: int | None
    outputs_not_aliased: int | None
    generated_code: int | None
    peak: int | None                 # the figure to hold against HBM (CompileOutcome.device_peak)
    hbm: int                         # usable HBM per device, as the compiler states it
    host_temporaries: int | None = None  # what remat offload keeps in pinned host memory, not HBM

    def kinds(self) -> dict[str, int]:
        """Bytes by kind, in display order (argument padding is the compiler's surplus)."""
        out = {"parameters": self.arguments.params, "optimizer state": self.arguments.optimizer,
               "batch": self.arguments.batch, "step and rng": self.arguments.other}
        if self.compiler_arguments is not None:
            out["argument padding"] = max(0, self.compiler_arguments - self.arguments.total)
        for name, value in (("temporaries", self.temporaries), ("outputs not aliased", self.outputs_not_aliased),
                            ("generated code", self.generated_code)):
            if value is not None:
                out[name] = value
        return out


@dataclasses.dataclass(frozen=True)
class CompileCount:
    """What answering cost: compiles run (and how many fit: those are the slow ones),
    outcomes the disk cache gave, and the worker processes' peak RSS."""

    compiled: int
    compiled_fits: int
    from_cache: int
    workers: int
    worker_peak_rss_mb: dict[int, float]

    @classmethod
    def of(cls, outcomes: list[CompileOutcome], *, workers: int, worker_peak_rss_mb: dict[int, float]) -> "CompileCount":
        run = [o for o in outcomes if not o.cached]
        return cls(compiled=len(run), compiled_fits=sum(o.fits for o in run), from_cache=len(outcomes) - len(run),
                   workers=workers, worker_peak_rss_mb=worker_peak_rss_mb)


@dataclasses.dataclass(frozen=True)
class WiderFsdp:
    """A refusal's way out: FSDP over every chip of the slice, and the parameter and
    optimizer-state bytes per device it would leave (from the shapes, no compile)."""

    fsdp_devices: int
    state_bytes: int     # parameters + optimizer state per device at that FSDP
    now_bytes: int       # the same at the requested FSDP


@dataclasses.dataclass(frozen=True)
class FitReport:
    target: Target
    model: dict[str, Any]            # name, size, parameter count, dtypes, remat
    mesh: dict[str, int]
    batch_size: int
    fits: bool
    memory: MemoryByKind
    oom: OutOfMemory | None
    compile_seconds: float
    program_fingerprint: str | None  # of the compiled step (harness.fit.compile.program_fingerprint)
    census: dict[str, KindCount] | None
    bound: StepTimeBound | None
    compiler_cost: dict[str, float] | None
    search: SearchResult | None
    cost: StepCost | None = None         # the estimate and the bill, at the assumed MFU and price
    plan: SavePlan | None = None         # the checkpoint plan
    compiles: CompileCount | None = None
    wall_seconds: float = 0.0
    wider_fsdp: WiderFsdp | None = None  # a refusal at an FSDP smaller than the slice: what the slice's would hold
    compiler_memory: dict[str, int] | None = None  # memory_analysis() as libtpu gave it (a fit only)

    @property
    def used_bytes(self) -> int | None:
        """Peak memory if it fits; the compiler's required figure if not."""
        return self.memory.peak if self.fits else (self.oom.required_bytes if self.oom else None)

    @property
    def headroom_percent(self) -> float | None:
        used = self.used_bytes
        return None if used is None else 100.0 * (self.memory.hbm - used) / self.memory.hbm

    @property
    def verdict(self) -> str:
        return "FITS" if self.fits else "DOES NOT FIT"

    def to_dict(self) -> dict[str, Any]:
        target = dataclasses.asdict(self.target)
        target["devices"] = self.target.num_devices
        target["hosts_per_slice"] = self.target.hosts_per_slice
        return {
            "mode": "fit",
            "verdict": self.verdict,
            "headroom_percent": self.headroom_percent,
            "target": target,
            "model": self.model,
            "mesh": self.mesh,
            "global_batch_size": self.batch_size,
            "memory_per_device_bytes": {**self.memory.kinds(), "peak": self.memory.peak, "hbm": self.memory.hbm,
                                        "pinned host temporaries": self.memory.host_temporaries},
            "out_of_memory": dataclasses.asdict(self.oom) if self.oom else None,
            "largest_batch": dataclasses.asdict(self.search) if self.search else None,
            "flops": None if self.bound is None else {
                "per_step": self.bound.flops_per_step, "per_device": self.bound.flops_per_device,
                "source": self.bound.flops_source,
                "compiler_per_device": (self.compiler_cost or {}).get("flops"),
            },
            "step_time_lower_bound": None if self.bound is None else {
                "seconds": self.bound.seconds, "limited_by": self.bound.limited_by,
                "compute_seconds": self.bound.compute_s, "hbm_seconds": self.bound.memory_s,
                "hbm_bytes_per_device": self.bound.hbm_bytes_per_device,
                "peak_bf16_flops": self.target.chip.peak_bf16_flops,
                "hbm_bytes_per_s": self.target.chip.hbm_bytes_per_s, "source": self.target.chip.source,
            },
            "step_cost": None if self.cost is None else self.cost.to_dict(),
            "checkpoint_plan": None if self.plan is None else self.plan.to_dict(),
            "collectives": None if self.census is None else {k: dataclasses.asdict(v) for k, v in self.census.items()},
            "compiler_bytes_accessed_per_device": (self.compiler_cost or {}).get("bytes accessed"),
            "program_fingerprint": self.program_fingerprint,
            "compile_seconds": self.compile_seconds,
            "compiles": None if self.compiles is None else dataclasses.asdict(self.compiles),
            "wall_seconds": self.wall_seconds,
            "wider_fsdp": None if self.wider_fsdp is None else dataclasses.asdict(self.wider_fsdp),
            "compiler_memory_analysis": self.compiler_memory,
        }


def write_json(result: Any, path: Path) -> None:
    """fit.json: a FitReport's record, a comparison's or a settings search's (anything
    with `to_dict`), under harness/fit/schema.py's version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": SCHEMA_ID, **result.to_dict()}, indent=2) + "\n")
