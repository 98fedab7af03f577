"""TPU products (`v5litepod-256`), the libtpu topologies they are (`v5e:16x16`), and
the chips' published speeds.

libtpu takes only topology names and accepts sizes that no product has (`v6e:32x32`),
so a target must be a product of this table, named either way. Shapes follow Cloud TPU's
documented slice shapes (MaxText's accelerator_to_spec_map.py lists the same):
v4 and v5p are 3D tori named by TensorCores (v4-8 = 4 chips), v5e and v6e 2D tori named
by chips. `chips_per_host_bounds` gives the host layout (4 chips per host on pods).
"""

from __future__ import annotations

import dataclasses

from harness.errors import UsageError
from harness.fit.units import GIB


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One device as the compiler sees it (a chip; a TensorCore under chip config
    `default` on v4). `hbm_bytes` is the usable HBM the TPU compiler reports
    ("exceeds available HBM (15.75G)", G = GiB); harness-fit asks the compiler again on
    every run and uses its answer. Peak FLOP/s and HBM bandwidth are Cloud TPU's
    published per-chip figures (`source`), halved per TensorCore."""

    name: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bytes_per_s: float
    source: str


CHIPS = {
    ("v4", "megacore"): ChipSpec("TPU v4 (megacore)", int(30.75 * GIB), 275e12, 1200e9,
                                 "https://cloud.google.com/tpu/docs/v4"),
    ("v4", "default"): ChipSpec("TPU v4 TensorCore", int(15.25 * GIB), 137.5e12, 600e9,
                                "https://cloud.google.com/tpu/docs/v4 (per chip, halved)"),
    ("v5p", "megacore"): ChipSpec("TPU v5p (megacore)", int(95.74 * GIB), 459e12, 2765e9,
                                  "https://cloud.google.com/tpu/docs/v5p"),
    ("v5e", "default"): ChipSpec("TPU v5e", int(15.75 * GIB), 197e12, 819e9,
                                 "https://cloud.google.com/tpu/docs/v5e"),
    ("v6e", "default"): ChipSpec("TPU v6e (Trillium)", int(31.25 * GIB), 918e12, 1640e9,
                                 "https://cloud.google.com/tpu/docs/v6e"),
}

# Product family -> (libtpu prefix, default chip config, product number per chip).
FAMILIES = {
    "v4": ("v4", "megacore", 2),
    "v5p": ("v5p", "megacore", 2),
    "v5litepod": ("v5e", "default", 1),
    "v6e": ("v6e", "default", 1),
}
FAMILY_ALIASES = {"v5e": "v5litepod"}

_3D = ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x4x12", "4x8x8", "8x8x8",
       "8x8x12", "8x8x16", "8x16x16")
_2D = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
SHAPES = {"v4": _3D, "v5p": _3D + ("16x16x16",), "v5litepod": _2D, "v6e": _2D}


@dataclasses.dataclass(frozen=True)
class Target:
    """A resolved target: what to ask libtpu for, and the chip to judge it by."""

    product: str               # v5litepod-256
    topology: str              # v5e:16x16
    chip_config: str           # default | megacore
    chips_per_host_bounds: tuple[int, int, int]
    num_slices: int
    chips: int                 # per slice
    chip: ChipSpec

    @property
    def devices_per_slice(self) -> int:
        return self.chips * (2 if self.chip_config == "default" and self.topology.startswith("v4") else 1)

    @property
    def num_devices(self) -> int:
        return self.devices_per_slice * self.num_slices

    @property
    def hosts_per_slice(self) -> int:
        per_host = self.chips_per_host_bounds[0] * self.chips_per_host_bounds[1] * self.chips_per_host_bounds[2]
        return max(1, self.chips // per_host)


def _chip_count(shape: str) -> int:
    count = 1
    for n in shape.split("x"):
        count *= int(n)
    return count


def _host_bounds(family: str, shape: str) -> tuple[int, int, int]:
    """4 chips per host (2x2) on pods; the one-host 2D products keep their own shape."""
    if family in ("v5litepod", "v6e") and _chip_count(shape) <= 8:
        x, y = (int(n) for n in shape.split("x"))
        return (x, y, 1)
    return (2, 2, 1)


def products() -> dict[str, tuple[str, str]]:
    """Every product name -> (family, shape), e.g. v4-32 -> (v4, 2x2x4)."""
    table = {}
    for family, shapes in SHAPES.items():
        per_chip = FAMILIES[family][2]
        for shape in shapes:
            table[f"{family}-{_chip_count(shape) * per_chip}"] = (family, shape)
    return table


def _find(name: str) -> tuple[str, str]:
    """(family, shape) of a product name or a libtpu topology name."""
    family, sep, rest = name.partition("-")
    family = FAMILY_ALIASES.get(family, family)
    table = products()
    if sep and f"{family}-{rest}" in table:
        return table[f"{family}-{rest}"]
    prefix, sep, shape = name.partition(":")
    for candidate, (libtpu_prefix, _, _) in FAMILIES.items():
        if sep and prefix == libtpu_prefix and shape in SHAPES[candidate]:
            return candidate, shape
    known = ", ".join(sorted(table, key=lambda p: (p.split("-")[0], int(p.split("-")[1]))))
    raise UsageError(f"unknown TPU product or topology {name!r} (products: {known}; "
                     f"or their libtpu names, e.g. v5e:4x4, v4:2x2x4)")


def resolve(topology: str, chip_config: str = "", num_slices: int = 1) -> Target:
    """The target `--topology/--chip_config/--num_slices` name; UsageError otherwise."""
    if not topology:
        raise UsageError("no TPU target: pass --topology (a product such as v5litepod-16 or a "
                         "topology such as v5e:4x4), or a TPU preset such as --config v5litepod-16")
    if num_slices < 1:
        raise UsageError(f"--num_slices must be positive, got {num_slices}")
    family, shape = _find(topology)
    libtpu_prefix, default_config, per_chip = FAMILIES[family]
    config = chip_config or default_config
    chip = CHIPS.get((libtpu_prefix, config))
    if chip is None:
        configs = sorted(c for (p, c) in CHIPS if p == libtpu_prefix)
        raise UsageError(f"chip config {config!r} is not available on {family} (choose {', '.join(configs)})")
    chips = _chip_count(shape)
    return Target(product=f"{family}-{chips * per_chip}", topology=f"{libtpu_prefix}:{shape}", chip_config=config,
                  chips_per_host_bounds=_host_bounds(family, shape), num_slices=num_slices, chips=chips, chip=chip)


def parse_targets(text: str, num_slices: int) -> list[str]:
    """`--targets a,b,c` as product names; UsageError for an unknown or repeated one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    products = [resolve(name, "", num_slices).product for name in names]
    repeated = sorted({p for p in products if products.count(p) > 1})
    if not products or repeated:
        raise UsageError(f"--targets needs distinct TPU products, got {text!r}"
                         + (f" ({', '.join(repeated)} twice)" if repeated else ""))
    return products
