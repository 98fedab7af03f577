"""A lower bound on step time: no step can beat the chip's peak bf16 FLOP/s on its share
of the model's FLOPs, nor its HBM bandwidth on the bytes it must move.

FLOPs are the model's analytic matmul FLOPs (`train_flops`, forward + backward) plus
what its remat policy recomputes (`remat_flops`, where the model has it), split evenly
over the devices: the work the step executes, so remat's cost shows. Where a model has
no analytic count, the compiler's `cost_analysis` is used, which counts a scan body
once: fewer FLOPs than run, so the bound stays a bound. For a one-layer model the two
can be compared (tests/test_fit.py does). The bytes are the least any optimizer step moves: every
parameter and optimizer-state byte read and written once, the batch read once.
Collectives and activation traffic come on top, so real steps are slower.
"""

from __future__ import annotations

import dataclasses

from harness.fit.compile import ArgumentBytes
from harness.fit.topology import ChipSpec


@dataclasses.dataclass(frozen=True)
class StepTimeBound:
    flops_per_step: float        # the model's, without remat's recompute
    flops_per_device: float      # executed: the model's share plus the recompute
    flops_source: str            # "analytic" | "compiler (scan bodies counted once)"
    compute_s: float
    hbm_bytes_per_device: int
    memory_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def limited_by(self) -> str:
        return "compute (peak bf16 FLOP/s)" if self.compute_s >= self.memory_s else "HBM bandwidth"


def step_time_bound(*, analytic_flops: float | None, compiler_flops_per_device: float | None,
                    num_devices: int, arguments: ArgumentBytes, chip: ChipSpec,
                    recompute_flops: float = 0.0) -> StepTimeBound:
    if analytic_flops is not None:
        model, per_device = analytic_flops, (analytic_flops + recompute_flops) / num_devices
        source = "analytic" + (" + remat recompute" if recompute_flops else "")
    else:
        per_device, source = compiler_flops_per_device or 0.0, "compiler (scan bodies counted once)"
        model = per_device * num_devices
    moved = 2 * (arguments.params + arguments.optimizer) + arguments.batch
    return StepTimeBound(
        flops_per_step=model, flops_per_device=per_device, flops_source=source,
        compute_s=per_device / chip.peak_bf16_flops, hbm_bytes_per_device=moved,
        memory_s=moved / chip.hbm_bytes_per_s,
    )
