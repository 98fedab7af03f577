"""harness-fit results made by hand, with round numbers a chart test can check pixels
against: one target's report (fits or out of memory) and a comparison of targets."""

from __future__ import annotations

import dataclasses

from harness.fit.compare import Comparison, TargetRow, rank, row_of
from harness.fit.compile import ArgumentBytes, OutOfMemory
from harness.fit.economics import PRICES, Assumptions, StepCost
from harness.fit.report import CompileCount, FitReport, MemoryByKind
from harness.fit.topology import resolve
from harness.fit.units import GIB

MIB = 1 << 20
HBM = int(15.75 * GIB)  # v5e's, as the compiler states it
# Bytes per device by kind when it fits; the compiler's peak is 7 GiB, less than their sum.
KINDS = {"parameters": GIB, "optimizer state": 2 * GIB, "batch": GIB // 2, "step and rng": 12,
         "argument padding": 4096, "temporaries": 4 * GIB, "outputs not aliased": 0, "generated code": MIB}
PEAK = 7 * GIB
REQUIRED = 20 * GIB     # what the compiler asks for when it runs out of memory


def memory_report(fits: bool, *, product: str = "v5litepod-16", batch_size: int = 256) -> FitReport:
    arguments = ArgumentBytes(params=KINDS["parameters"], optimizer=KINDS["optimizer state"], batch=KINDS["batch"],
                              other=KINDS["step and rng"])
    memory = MemoryByKind(arguments=arguments,
                          compiler_arguments=arguments.total + KINDS["argument padding"] if fits else None,
                          temporaries=KINDS["temporaries"] if fits else None,
                          outputs_not_aliased=KINDS["outputs not aliased"] if fits else None,
                          generated_code=KINDS["generated code"] if fits else None,
                          peak=PEAK if fits else None, hbm=HBM)
    oom = None if fits else OutOfMemory("RESOURCE_EXHAUSTED: ... (20.00G) exceeds available HBM (15.75G).",
                                        REQUIRED, HBM)
    return FitReport(target=resolve(product), model={"name": "transformer", "size": "1b", "parameters": 1e9,
                                                     "param_dtype": "float32", "compute_dtype": "bfloat16",
                                                     "remat": "full", "analytic_flops": True},
                     mesh={"data": 1, "fsdp": resolve(product).num_devices}, batch_size=batch_size, fits=fits,
                     memory=memory, oom=oom, compile_seconds=1.0, program_fingerprint=None, census={}, bound=None,
                     compiler_cost=None, search=None)


def target_row(product: str, *, seconds: float, usd: float, batch_size: int, requested: int,
               fits: bool = True) -> TargetRow:
    """A row whose step at `batch_size` takes `seconds` and costs `usd` per 1,000 steps
    (scaled by row_of to the `requested` batch, as harness-fit does)."""
    report = memory_report(fits, product=product, batch_size=batch_size)
    chips = report.target.chips
    price = dataclasses.replace(PRICES["v5litepod"], usd_per_chip_hour=usd * 3600 / (1000 * seconds * chips))
    return row_of(dataclasses.replace(report, cost=StepCost(seconds, 0.4, chips, price)), "", requested)


def comparison(rows: list[TargetRow], batch_size: int) -> Comparison:
    return Comparison(rank(rows), batch_size, Assumptions(), CompileCount(0, 0, 0, 1, {}), 0.0)
