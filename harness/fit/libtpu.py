"""Compile-only TPU devices from libtpu, on a machine with no TPU.

`jax.experimental.topologies.get_topology_desc` gives devices that can be compiled for
but not run on; JAX itself stays on CPU (`JAX_PLATFORMS=cpu`), so CPU work in the same
process keeps working. libtpu reads its environment once, when it loads:
`ALLOW_MULTIPLE_LIBTPU_LOAD` lets it load while another process holds
/tmp/libtpu_lockfile, and `TPU_WORKER_HOSTNAMES` + `TPU_ACCELERATOR_TYPE` keep it from
looking for a real pod (and warning about it).
"""

from __future__ import annotations

import importlib.util
import os
import re

from harness.errors import UsageError, first_line
from harness.fit.topology import Target
from harness.fit.units import GIB

_HBM_MESSAGE = re.compile(r"exceeds available HBM \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": GIB, "T": 1 << 40}


def prepare_environment(target: Target) -> None:
    """Sets what libtpu reads at load; call before the first topology request."""
    if importlib.util.find_spec("libtpu") is None:
        raise UsageError("libtpu is not installed: harness-fit compiles for TPU with it "
                         "(pip install -e '.[tpu]', or `make fit`, which installs it)")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.product)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def topology_devices(target: Target) -> list:
    """The target's compile-only devices: every slice's, with `slice_index` on each
    when there are several."""
    from jax.experimental import topologies

    prepare_environment(target)
    try:
        description = topologies.get_topology_desc(
            topology_name=target.topology, platform="tpu", chip_config_name=target.chip_config,
            chips_per_host_bounds=target.chips_per_host_bounds, num_slices=target.num_slices)
    except Exception as err:  # libtpu's refusals come as assorted runtime errors
        raise UsageError(f"libtpu refused topology {target.topology} ({target.chip_config}, "
                         f"{target.num_slices} slice(s)): {first_line(err)}") from None
    devices = list(description.devices)
    if len(devices) != target.num_devices:
        raise UsageError(f"libtpu gave {len(devices)} devices for {target.product} x{target.num_slices}, "
                         f"expected {target.num_devices}")
    return devices


def parse_bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def compiler_hbm_bytes(device) -> int | None:
    """Usable HBM of one device as the TPU compiler states it: compile a program that
    needs 1 TiB and read the figure from its RESOURCE_EXHAUSTED message (milliseconds).
    None if the message has another form."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    sharding = NamedSharding(Mesh(np.asarray([device]), ("one",)), P())
    huge = jax.ShapeDtypeStruct((1 << 40,), jnp.int8, sharding=sharding)
    try:
        jax.jit(lambda x: x + 1, in_shardings=sharding, out_shardings=sharding).lower(huge).compile()
    except Exception as err:
        match = _HBM_MESSAGE.search(str(err))
        return parse_bytes(*match.groups()) if match else None
    return None
