"""The device mesh and how every array is laid out on it.

Mesh axes are (`data`, `fsdp`): `fsdp` devices share one copy of the parameters and
optimizer state (each holds a slice, FSDP-style), `data` replicates that group. Devices
from several TPU slices (joined over DCN) get a leading `slice` axis, so FSDP traffic
stays on a slice's ICI links. The batch is split over all devices. Global batches are built from host-local data with
`jax.make_array_from_process_local_data`, so the same code is right on one host and on
many.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from harness.errors import UsageError

DATA_AXIS, FSDP_AXIS, SLICE_AXIS = "data", "fsdp", "slice"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def check_topology(batch_size: int, fsdp_devices: int) -> None:
    """Device-dependent input checks, with messages that say how to fix them."""
    num_devices, num_processes = jax.device_count(), jax.process_count()
    if num_devices % fsdp_devices:
        raise UsageError(
            f"--fsdp_devices={fsdp_devices} does not divide the {num_devices} devices"
        )
    if batch_size % num_devices:
        raise UsageError(
            f"--batch_size={batch_size} is not divisible by the {num_devices} devices"
        )
    if batch_size % num_processes:
        raise UsageError(
            f"--batch_size={batch_size} is not divisible by the {num_processes} processes"
        )


def make_mesh(fsdp_devices: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of `devices` (default: all of this run's), for training and harness-fit.

    One slice: (data, fsdp). On CPU each fsdp group is consecutive devices; on TPU
    `mesh_utils.create_device_mesh` lays the axes onto the physical torus, `fsdp` (the
    chattiest) on the best-connected chips. Several slices (devices with a
    `slice_index`): (slice, data, fsdp) from `create_hybrid_device_mesh`, one slice per
    index of the DCN axis; `fsdp_devices` must divide each slice's devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    per_slice = len(devices) // num_slices
    if per_slice % fsdp_devices:
        raise UsageError(f"--fsdp_devices={fsdp_devices} does not divide the {per_slice} devices of a slice")
    shape = (per_slice // fsdp_devices, fsdp_devices)
    if num_slices == 1:
        return Mesh(_device_grid(shape, devices), BATCH_AXES)
    grid = mesh_utils.create_hybrid_device_mesh((1, *shape), (num_slices, 1, 1), devices,
                                                allow_split_physical_axes=True)
    return Mesh(grid, (SLICE_AXIS, *BATCH_AXES))


def _device_grid(shape: tuple[int, int], devices: list[jax.Device]) -> np.ndarray:
    """Devices in a `shape` grid: torus-aware on TPU (splitting a physical axis only
    if no other layout exists), `devices` order elsewhere."""
    try:
        return mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError):
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Shard the largest axis that `fsdp` divides; replicate what cannot be split."""
    if fsdp_size == 1 or not shape:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = FSDP_AXIS
            return P(*spec)
    return P()


def fsdp_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree of ShapeDtypeStructs (params or optimizer state)."""
    size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, size)), abstract_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over every device (every mesh axis); trailing axes whole."""
    return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def make_global_batch(local_tree: Any, mesh: Mesh) -> Any:
    """Assemble each host's rows into global arrays sharded over the batch axis."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree
    )


def host_local_rows(array: jax.Array) -> np.ndarray:
    """This host's rows of one batch-sharded array, in global row order."""
    return host_local_rows_of([array])[0]


def host_local_rows_of(arrays: Sequence[jax.Array]) -> list[np.ndarray]:
    """This host's rows of batch-sharded arrays, each in global row order.

    Reads only addressable shards (no cross-host traffic), all in one transfer; each row
    is read once even if a shard is replicated.
    """
    per_array = []
    for array in arrays:
        shards = [s for s in array.addressable_shards if s.replica_id == 0]
        shards.sort(key=lambda s: s.index[0].start or 0)
        per_array.append([s.data for s in shards])
    fetched = jax.device_get(per_array)
    return [np.concatenate(parts) for parts in fetched]
