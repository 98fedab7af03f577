"""What GKE needs to place a TPU slice: the node selectors and the chips each pod asks for.

The slice shape and its hosts come from the project's own product table
(harness/fit/topology.py, the one harness-fit compiles for), so the TPU VM launcher, the
fit check and GKE agree on what `v5litepod-16` is. GKE's names per family follow its TPU
docs and xpk's system_characteristics.py: node label `cloud.google.com/gke-tpu-accelerator`
(tpu-v4-podslice, tpu-v5p-slice, tpu-v5-lite-podslice, tpu-v6e-slice), label
`cloud.google.com/gke-tpu-topology` (the slice shape, e.g. 4x4), and one pod per VM asking
for all its chips as `google.com/tpu`.
"""

from __future__ import annotations

import dataclasses

from harness.fit.topology import Target, resolve

ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
TPU_RESOURCE = "google.com/tpu"

# Product family -> (GKE accelerator name, machine type prefix; the suffix is chips per VM).
GKE_FAMILIES = {
    "v4": ("tpu-v4-podslice", "ct4p-hightpu"),
    "v5p": ("tpu-v5p-slice", "ct5p-hightpu"),
    "v5litepod": ("tpu-v5-lite-podslice", "ct5lp-hightpu"),
    "v6e": ("tpu-v6e-slice", "ct6e-standard"),
}


@dataclasses.dataclass(frozen=True)
class GkeSlice:
    """One TPU slice as GKE schedules it: `vms` pods with `chips_per_vm` chips each."""

    product: str          # v5litepod-16
    accelerator: str      # tpu-v5-lite-podslice
    topology: str         # 4x4
    machine_type: str     # ct5lp-hightpu-4t
    vms: int
    chips_per_vm: int
    num_slices: int

    def node_selector(self) -> dict[str, str]:
        return {ACCELERATOR_LABEL: self.accelerator, TOPOLOGY_LABEL: self.topology}


def gke_slice(target: Target) -> GkeSlice:
    family = target.product.split("-")[0]
    accelerator, machine_prefix = GKE_FAMILIES[family]
    x, y, z = target.chips_per_host_bounds
    chips_per_vm = x * y * z
    return GkeSlice(product=target.product, accelerator=accelerator, topology=target.topology.split(":")[1],
                    machine_type=f"{machine_prefix}-{chips_per_vm}t", vms=target.hosts_per_slice,
                    chips_per_vm=chips_per_vm, num_slices=target.num_slices)


def slice_for(topology: str, chip_config: str = "", num_slices: int = 1) -> GkeSlice:
    """The GKE slice of a preset's `topology` (a product or libtpu name); UsageError otherwise."""
    return gke_slice(resolve(topology, chip_config, num_slices))
