"""What a step costs: the step-time bound turned into an estimate with an assumed model
FLOPs utilization (MFU), and a list price per chip-hour.

`--mfu` (default 0.4): the estimate is max(compute time / MFU, HBM time), the compute time
being the bound's, on the FLOPs the step executes (remat's recompute included, so a remat
policy's cost shows; without remat it is MFU exactly). MaxText's tuned
16B-128B LLMs reach 46-67% MFU on v5e-256 (MaxText/configs/v5e/README.md) and 64-71% on
v5p; 0.4 is below that on purpose: the models here are smaller for their slices (so
collectives weigh more), untuned, and full remat's recompute is not in model FLOPs.

Prices: Cloud TPU on-demand list prices per chip-hour in USD, for one region each, as
found on 2026-12-06. This machine has no internet and the copy of Google's pricing page
the search corpus holds predates v5e, so each price names where it was read; they vary
by region and change. `--price_per_chip_hour` overrides them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from harness.errors import UsageError
from harness.fit.plan import StorageThroughput
from harness.fit.topology import Target

if TYPE_CHECKING:  # the roofline imports jax; the command line parses without it
    from harness.fit.roofline import StepTimeBound

DEFAULT_MFU = 0.4
DEFAULT_MTBF_HOURS = 24.0   # a placeholder for the slice's own record: pass --mtbf_hours
PRICES_AS_OF = "2026-12-06"


@dataclasses.dataclass(frozen=True)
class Price:
    usd_per_chip_hour: float
    region: str
    source: str


PRICES = {  # by product family (harness/fit/topology.py)
    "v4": Price(3.22, "us-central2", "Cloud TPU pricing page, on-demand/evaluation price per chip-hour on "
                                     "2022-08-11, as quoted by INFER question 1114 (infer-pub.com)"),
    "v5litepod": Price(1.20, "list price", "artificial-intelligence-wiki.com, 'Google TPU v5 Guide' (updated "
                                           "2026-01-27): v5e $1.2/chip/hour"),
    "v5p": Price(4.20, "list price", "artificial-intelligence-wiki.com, 'Google TPU v5 Guide' (updated "
                                     "2026-01-27): v5p $4.2/chip/hour"),
    "v6e": Price(2.70, "us-east1, us-east5", "cloud.google.com/tpu/pricing as copied into SkyPilot's catalog "
                                             "(skypilot-org/skypilot#4218, 2024-10-30)"),
}


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """What the estimate, the bill and the checkpoint plan assume, besides the compiler."""

    mfu: float = DEFAULT_MFU
    price_per_chip_hour: float | None = None   # None: the table's
    mtbf_hours: float = DEFAULT_MTBF_HOURS     # the whole slice's mean time between failures
    throughput: StorageThroughput | None = None  # None: the plan has bytes but no save time

    def __post_init__(self) -> None:
        if not 0 < self.mfu <= 1:
            raise UsageError(f"--mfu must be in (0, 1], got {self.mfu:g}")
        if self.mtbf_hours <= 0:
            raise UsageError(f"--mtbf_hours must be positive, got {self.mtbf_hours:g}")
        if self.price_per_chip_hour is not None and self.price_per_chip_hour <= 0:
            raise UsageError(f"--price_per_chip_hour must be positive, got {self.price_per_chip_hour:g}")


def family(target: Target) -> str:
    return target.product.rsplit("-", 1)[0]


def price_of(target: Target, assumptions: Assumptions) -> Price:
    if assumptions.price_per_chip_hour is not None:
        return Price(assumptions.price_per_chip_hour, "given", "--price_per_chip_hour")
    return PRICES[family(target)]


@dataclasses.dataclass(frozen=True)
class StepCost:
    estimate_s: float            # per step, at the assumed MFU
    mfu: float
    chips: int                   # billed: every chip of every slice
    price: Price

    @property
    def usd_per_1000_steps(self) -> float:
        return self.price.usd_per_chip_hour * self.chips * 1000 * self.estimate_s / 3600

    def to_dict(self) -> dict:
        return {"estimate_seconds": self.estimate_s, "mfu": self.mfu, "chips": self.chips,
                "usd_per_chip_hour": self.price.usd_per_chip_hour, "price_region": self.price.region,
                "price_source": self.price.source, "prices_as_of": PRICES_AS_OF,
                "usd_per_1000_steps": self.usd_per_1000_steps}


def step_cost(bound: StepTimeBound, target: Target, assumptions: Assumptions) -> StepCost:
    estimate = max(bound.compute_s / assumptions.mfu, bound.memory_s)
    return StepCost(estimate, assumptions.mfu, target.chips * target.num_slices, price_of(target, assumptions))
