"""Every device computes something whose answer is known exactly, then all of them
add their results together (AXLearn's TPU health check, with attribution).

Device k (its position in `jax.devices()`) multiplies two `SIZE`x`SIZE` matrices of
small integers drawn from a seed k: every product and partial sum is an integer far
below 2**24, so the float32 result is exact on any chip and any summation order, and
host code computes the same answer in float64. Then a `psum` over all devices adds the
products. Each host checks its own devices' products (a wrong one FAILs naming the
host and the device id) and its devices' copies of the sum. A wrong product makes the
sum wrong everywhere, so the sum is judged on process 0 against the expected total
plus the errors the hosts reported (two checksums, plain and index-weighted): a pod
whose only fault is one bad chip gets one FAIL, on the host that has it.

On a TPU host (one with /dev/accel* or /dev/vfio) it also names the libtpu lockfile's
holders and any other process holding an accelerator device file (marin#5258: a stale
process keeps the chips); elsewhere that part is skipped, and said so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import Mapping

import numpy as np

from harness.preflight.faults import WRONG_DEVICE_RESULT, Fault
from harness.preflight.results import DEVICES, FAIL, PASS, HostReport, Observation

SIZE = 256
VALUE_RANGE = 2  # entries in [-2, 2]: |product| <= 256 * 4, sums of 16384 devices stay exact in float32
LIBTPU_LOCKFILE = Path("/tmp/libtpu_lockfile")
ACCELERATOR_PREFIXES = ("/dev/accel", "/dev/vfio")
_AXIS = "devices"


def operands(position: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(position)
    a, b = rng.integers(-VALUE_RANGE, VALUE_RANGE + 1, size=(2, SIZE, SIZE))
    return a.astype(np.float32), b.astype(np.float32)


def expected_product(position: int) -> np.ndarray:
    a, b = operands(position)
    return a.astype(np.float64) @ b.astype(np.float64)


def checksums(block: np.ndarray) -> tuple[float, float]:
    """Plain and index-weighted sums (weights 1..7): exact for integer-valued blocks."""
    flat = np.asarray(block, np.float64).reshape(-1)
    weights = np.arange(flat.size) % 7 + 1
    return float(flat.sum()), float(flat @ weights)


def run_device_check(fault: Fault) -> Observation:
    """Runs the program on every device of the pod (a collective: every host calls it)."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = jax.devices()
    mesh = Mesh(np.array(devices), (_AXIS,))
    sharded = NamedSharding(mesh, P(_AXIS))
    poisoned = jax.local_devices()[-1].id if fault.here(WRONG_DEVICE_RESULT) else None

    def block(kind: str):
        def make(index) -> np.ndarray:
            position = index[0].start or 0
            if kind == "poison":
                poison = np.zeros((1, SIZE, SIZE), np.float32)
                poison[0, 0, 0] = 1.0 if devices[position].id == poisoned else 0.0
                return poison
            return operands(position)[0 if kind == "a" else 1][None]
        return jax.make_array_from_callback((len(devices), SIZE, SIZE), sharded, make)

    def kernel(a, b, poison):
        product = jax.lax.dot(a[0], b[0], precision=jax.lax.Precision.HIGHEST) + poison[0]
        return product[None], jax.lax.psum(product, _AXIS)

    step = jax.jit(jax.shard_map(kernel, mesh=mesh, in_specs=(P(_AXIS),) * 3, out_specs=(P(_AXIS), P())))
    args = (block("a"), block("b"), block("poison"))
    jax.block_until_ready(step(*args))  # compile and warm up
    started = time.perf_counter()
    products, total = jax.block_until_ready(step(*args))
    elapsed = time.perf_counter() - started
    return _verdict(products, total, devices, elapsed)


def _verdict(products, total, devices, elapsed: float) -> Observation:
    position = {d.id: i for i, d in enumerate(devices)}
    wrong, error_sum, error_weighted = [], 0.0, 0.0
    for shard in products.addressable_shards:
        got = np.asarray(shard.data, np.float64)[0]
        diff = got - expected_product(position[shard.device.id])
        if np.any(diff != 0):
            bad = int(np.count_nonzero(diff))
            wrong.append(f"device {shard.device.id}: {bad}/{SIZE * SIZE} wrong")
            plain, weighted = checksums(diff)
            error_sum, error_weighted = error_sum + plain, error_weighted + weighted
    expected_total = sum(expected_product(i) for i in range(len(devices)))
    copies = [np.asarray(s.data, np.float64) - expected_total for s in total.addressable_shards]
    deviation = checksums(copies[0])
    split = [s.device.id for s, c in zip(total.addressable_shards, copies, strict=True) if not np.array_equal(c, copies[0])]
    metrics = {"devices": float(len(products.addressable_shards)), "time_ms": elapsed * 1e3,
               "error_sum": error_sum, "error_weighted_sum": error_weighted,
               "allreduce_deviation_sum": deviation[0], "allreduce_deviation_weighted_sum": deviation[1]}
    problems = wrong + [f"device {d}'s copy of the all-reduce differs from device "
                        f"{total.addressable_shards[0].device.id}'s" for d in split]
    if problems:
        return Observation(DEVICES, FAIL, "; ".join(problems)[:120],
                           f"{'; '.join(problems)} (elements of its {SIZE}x{SIZE} product that differ from the "
                           f"exact answer)", metrics=metrics)
    return Observation(DEVICES, PASS, f"{len(products.addressable_shards)} exact, {elapsed * 1e3:.1f} ms",
                       f"matmul {SIZE}x{SIZE} + all-reduce over {len(devices)} devices: every local "
                       f"product exact, {elapsed * 1e3:.2f} ms", metrics=metrics)


def judge_allreduce(reports: Mapping[int, HostReport]) -> dict[int, str]:
    """Hosts whose all-reduce result is not the expected total plus the errors every host
    reported (the collective itself moved wrong values), with why."""
    observed = {h: r.observation(DEVICES) for h, r in reports.items()}
    observed = {h: o for h, o in observed.items() if o is not None and "error_sum" in o.metrics}
    errors = (sum(o.metrics["error_sum"] for o in observed.values()),
              sum(o.metrics["error_weighted_sum"] for o in observed.values()))
    bad = {}
    for host, obs in observed.items():
        deviation = (obs.metrics["allreduce_deviation_sum"], obs.metrics["allreduce_deviation_weighted_sum"])
        if deviation != errors:
            bad[host] = (f"the all-reduce on this host is off by checksums {deviation}, while the devices' "
                         f"own errors add up to {errors}: the collective moved wrong values")
    return bad


def accelerator_holders(proc: Path = Path("/proc"), own_pid: int | None = None) -> dict[str, list[str]]:
    """Device file or lockfile -> the other processes holding it open (`pid (command)`)."""
    own_pid = os.getpid() if own_pid is None else own_pid
    held: dict[str, list[str]] = {}
    for fd_dir in proc.glob("[0-9]*/fd"):
        pid = int(fd_dir.parent.name)
        if pid == own_pid:
            continue
        try:
            targets = {os.readlink(fd) for fd in fd_dir.iterdir()}
            command = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        for target in targets:
            if target.startswith(ACCELERATOR_PREFIXES) or target == str(LIBTPU_LOCKFILE):
                held.setdefault(target, []).append(f"{pid} ({command[:80] or '?'})")
    return held


def tpu_host_observation(dev: Path = Path("/dev"), proc: Path = Path("/proc")) -> Observation | None:
    """FAIL naming other processes that hold accelerator files; None when this is not a
    TPU host (no /dev/accel* and no /dev/vfio)."""
    if not (list(dev.glob("accel*")) or (dev / "vfio").exists()):
        return None
    held = accelerator_holders(proc)
    lock = (f"lockfile {LIBTPU_LOCKFILE} present" if LIBTPU_LOCKFILE.exists() else f"no {LIBTPU_LOCKFILE}")
    if held:
        named = "; ".join(f"{path} held by {', '.join(pids)}" for path, pids in sorted(held.items()))
        return Observation(DEVICES, FAIL, f"held by another process: {named}"[:120], f"{lock}; {named}")
    return Observation(DEVICES, PASS, "no other holder", f"{lock}; no other process holds /dev/accel*, "
                                                         f"/dev/vfio or the lockfile")


def device_check(fault: Fault) -> Observation:
    """The device program, then on TPU hosts the holder scan (either FAIL wins)."""
    observation = run_device_check(fault)
    holders = tpu_host_observation()
    if holders is None:
        note = "not a TPU host (no /dev/accel*, /dev/vfio): libtpu lockfile and device holders not checked"
        return Observation(observation.row, observation.status, observation.value,
                           f"{observation.detail}; {note}", metrics=observation.metrics)
    status = FAIL if FAIL in (observation.status, holders.status) else observation.status
    value = holders.value if holders.status == FAIL else observation.value
    return Observation(observation.row, status, value, f"{observation.detail}; {holders.detail}",
                       metrics=observation.metrics)
