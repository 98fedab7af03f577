"""Can every host write where checkpoints go, how fast, and does a checkpoint come back
bit for bit?

First, from every host, a probe object is written, read back, compared and deleted in
the checkpoint dir (local or gs://, through etils.epath as orbax uses it), each step
timed. Then, only if every host's probe passed (the hosts agree on that first, so none
waits in orbax's barriers for a host that cannot write):

- throughput: every host writes one object the size of its share of a real checkpoint
  (parameter and optimizer bytes of the run's model over the number of hosts, at most
  `--throughput_max_bytes`), all starting together after a barrier, then reads it back
  together after another: a 64 KiB probe says nothing of a save that crawls at real
  sizes. Local files are fsynced (tensorstore syncs its files too) and dropped from the
  page cache before the read, so both numbers are the disk's. A host whose write or
  read takes `STORAGE_FACTOR` times the others' (stragglers.py's rule) and at least
  `STORAGE_MIN_EXCESS_S` longer fails, named.
- the round trip: a small sharded state (float32, bfloat16 and int32 leaves,
  FSDP-sharded like the real state) goes through the harness's own CheckpointStore:
  save, restore onto the same shardings, and every host compares its shards with what it
  saved, bit for bit (the store also verifies its checksums).

Everything lives under `<checkpoint_dir>/.podharness-preflight/<run id>/`, which
process 0 removes at the end; real checkpoints (numbered step directories) are never
touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Mapping

import numpy as np

from harness.config import TrainConfig
from harness.preflight.faults import UNWRITABLE_CHECKPOINT_DIR, Fault
from harness.preflight.guard import bounded
from harness.preflight.results import FAIL, PASS, ROUND_TRIP, STORAGE, THROUGHPUT, HostReport, Observation
from harness.preflight.stragglers import Outlier, outliers

SCRATCH = ".podharness-preflight"
PROBE_BYTES = 64 << 10
STORAGE_FACTOR = 2.0  # "far slower": twice the others' time ...
STORAGE_MIN_EXCESS_S = 0.5  # ... and this much longer (milliseconds of jitter are no finding)
MB = 1e6


def scratch_dir(checkpoint_dir: str, run_id: str) -> str:
    return f"{checkpoint_dir.rstrip('/')}/{SCRATCH}/{run_id}"


def probe_target(checkpoint_dir: str, run_id: str, host: int, fault: Fault) -> str:
    """Where this host's probe goes. The unwritable_checkpoint_dir fault puts it below
    a regular file, so the write fails with the operating system's own error."""
    scratch = scratch_dir(checkpoint_dir, run_id)
    if fault.here(UNWRITABLE_CHECKPOINT_DIR):
        from etils import epath

        blocker = epath.Path(scratch) / f"not-a-directory-host{host}"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_bytes(b"")
        return f"{blocker}/probe-host{host}"
    return f"{scratch}/probe-host{host}"


def probe(path: str) -> Observation:
    """Write, read back, compare, delete; milliseconds of each."""
    from etils import epath

    target = epath.Path(path)
    payload = os.urandom(PROBE_BYTES)
    times = {}
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    times["write_ms"] = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    back = target.read_bytes()
    times["read_ms"] = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    target.unlink()
    times["delete_ms"] = (time.perf_counter() - started) * 1e3
    value = f"w {times['write_ms']:.1f} r {times['read_ms']:.1f} d {times['delete_ms']:.1f} ms"
    if back != payload:
        return Observation(STORAGE, FAIL, "read back differs", f"{path}: {len(back)} bytes read back differ "
                                                               f"from the {len(payload)} written", metrics=times)
    return Observation(STORAGE, PASS, value, f"{PROBE_BYTES} B probe at {path}: {value}", metrics=times)


def probe_failed(err: BaseException, path: str) -> Observation:
    return Observation(STORAGE, FAIL, f"cannot write: {type(err).__name__}",
                       f"{path}: {type(err).__name__}: {err}")


def shard_bytes(config: TrainConfig, num_hosts: int) -> int:
    """This host's share of a checkpoint of the run's model: parameter and optimizer
    bytes (from the abstract state, nothing allocated) over the number of hosts."""
    import jax

    from harness.runtime.mesh import make_mesh
    from harness.train.step import abstract_state

    leaves = jax.tree.leaves(abstract_state(config, make_mesh(config.mesh.fsdp_devices)))
    return -(-sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in leaves) // num_hosts)


def _is_local(path: str) -> bool:
    return "://" not in path


def _write(path: str, payload: bytes) -> None:
    from etils import epath

    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    if _is_local(path):
        with open(path, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the read comes from the disk
        return
    epath.Path(path).write_bytes(payload)


def _read(path: str) -> bytes:
    if _is_local(path):
        with open(path, "rb") as handle:
            return handle.read()
    from etils import epath

    return epath.Path(path).read_bytes()


def _delete(path: str) -> None:
    from etils import epath

    epath.Path(path).unlink(missing_ok=True)


def throughput(checkpoint_dir: str, run_id: str, host: int, nbytes: int, meet: Callable[[], bool],
               timeout_s: float) -> Observation:
    """Write `nbytes`, then read them back, at the same moment as every other host (a
    collective sequence: every host passes both barriers `meet`, whatever happened to it;
    each transfer is abandoned as a FAIL after `timeout_s`)."""
    path = f"{scratch_dir(checkpoint_dir, run_id)}/throughput-host{host}"
    payload = np.random.default_rng(host).bytes(nbytes)
    seconds: dict[str, float] = {}
    back: list[bytes] = []

    def transfer(name: str, work: Callable[[], None]) -> Callable[[], Observation]:
        def timed() -> Observation:
            started = time.perf_counter()
            work()
            seconds[name] = time.perf_counter() - started
            return Observation(THROUGHPUT, PASS)
        return timed

    steps = (("write", lambda: _write(path, payload)), ("read", lambda: back.append(_read(path))))
    failed: Observation | None = None
    for name, work in steps:
        met = meet()
        if failed is None and not met:
            failed = Observation(THROUGHPUT, FAIL, "hosts did not meet", f"a host did not reach the barrier "
                                                                         f"before the {name}")
        if failed is None:
            try:
                done = bounded(THROUGHPUT, transfer(name, work), timeout_s)
            except Exception as err:  # the storage's own error, named
                done = Observation(THROUGHPUT, FAIL, f"{name} failed: {type(err).__name__}",
                                   f"{name} of {nbytes} B failed: {type(err).__name__}: {err}")
            failed = done if done.status == FAIL else None
    if failed is not None:
        return dataclasses.replace(failed, detail=f"{path}: {failed.detail}")
    with contextlib.suppress(OSError):  # process 0 removes the scratch dir at the end anyway
        _delete(path)
    if back[0] != payload:
        return Observation(THROUGHPUT, FAIL, "read back differs", f"{path}: the {nbytes} B read back differ "
                                                                  f"from those written")
    metrics = {"bytes": float(nbytes), "write_s": seconds["write"], "read_s": seconds["read"],
               "write_mb_per_s": nbytes / MB / seconds["write"], "read_mb_per_s": nbytes / MB / seconds["read"]}
    value = f"w {metrics['write_mb_per_s']:.0f} r {metrics['read_mb_per_s']:.0f} MB/s ({nbytes / MB:.1f} MB)"
    return Observation(THROUGHPUT, PASS, value, f"{path}: wrote {nbytes} B in {seconds['write']:.3f} s "
                                                f"({metrics['write_mb_per_s']:.1f} MB/s), read them back in "
                                                f"{seconds['read']:.3f} s ({metrics['read_mb_per_s']:.1f} MB/s), "
                                                f"every host at the same moment", metrics=metrics)


@dataclasses.dataclass(frozen=True)
class PodThroughput:
    """All hosts together: bytes over the time until the last one finished (they started together)."""

    hosts: int
    bytes: float
    write_mb_per_s: float
    read_mb_per_s: float


def pod_throughput(reports: Mapping[int, HostReport]) -> PodThroughput | None:
    measured = [o.metrics for r in reports.values() if (o := r.observation(THROUGHPUT)) and "write_s" in o.metrics]
    if not measured:
        return None
    total = sum(m["bytes"] for m in measured)
    return PodThroughput(len(measured), total, total / MB / max(m["write_s"] for m in measured),
                         total / MB / max(m["read_s"] for m in measured))


def judge_throughput(reports: Mapping[int, HostReport]) -> dict[int, Observation]:
    """The throughput cells of hosts far slower than the rest at writing or reading (FAIL)."""
    measured = {h: o for h, r in reports.items() if (o := r.observation(THROUGHPUT)) and "write_s" in o.metrics}
    found: dict[int, list[tuple[str, Outlier]]] = {}
    for name in ("write", "read"):
        for host, slow in outliers({h: o.metrics[f"{name}_s"] for h, o in measured.items()}, STORAGE_FACTOR,
                                   min_excess=STORAGE_MIN_EXCESS_S).items():
            found.setdefault(host, []).append((name, slow))
    cells = {}
    for host, slow_ones in found.items():
        cell = measured[host]
        reasons = [f"host {host}'s {name} is {slow.ratio:.1f}x slower than {slow.against} ({slow.value:.2f} s vs "
                   f"{slow.reference:.2f} s for {cell.metrics['bytes']:.0f} B)" for name, slow in slow_ones]
        name, slow = slow_ones[0]
        cells[host] = dataclasses.replace(cell, status=FAIL, detail="; ".join([*reasons, cell.detail]),
                                          value=f"{name} {slow.ratio:.1f}x slower than {slow.against}")
    return cells


def small_state(fsdp_devices: int):
    """A few sharded leaves of the kinds a train state holds, from a fixed seed."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from harness.runtime.mesh import make_mesh

    mesh = make_mesh(fsdp_devices)
    rows = NamedSharding(mesh, P(tuple(mesh.axis_names)))

    def make():
        key = jax.random.PRNGKey(17)
        return {"weights": jax.random.normal(key, (mesh.size * 64, 32), jnp.float32),
                "moments": jax.random.normal(key, (mesh.size * 16,), jnp.bfloat16),
                "counter": jnp.arange(mesh.size * 8, dtype=jnp.int32)}

    shardings = jax.tree.map(lambda _: rows, jax.eval_shape(make))
    return jax.jit(make, out_shardings=shardings)()


def round_trip(checkpoint_dir: str, run_id: str, fsdp_devices: int, timeout_s: int) -> Observation:
    """Save, then restore through a second store as a resumed run would (a store lists
    the steps when it opens), compare bitwise (a collective: every host calls it)."""
    import jax

    from harness.runtime.checkpoint import CheckpointStore

    state = small_state(fsdp_devices)
    directory = f"{scratch_dir(checkpoint_dir, run_id)}/round-trip"
    store = CheckpointStore(directory, keep=1, async_save=False, timeout_s=timeout_s)
    try:
        started = time.perf_counter()
        store.save(1, state, {"preflight": run_id, "nonce": uuid.uuid4().hex})
        store.wait()
        saved_s = time.perf_counter() - started
    finally:
        store.close()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    store = CheckpointStore(directory, keep=1, async_save=False, timeout_s=timeout_s)
    try:
        started = time.perf_counter()
        restored = store.restore_latest(abstract, lambda step, meta: None)
        restored_s = time.perf_counter() - started
    finally:
        store.close()
    metrics = {"save_s": saved_s, "restore_s": restored_s}
    if restored is None:
        return Observation(ROUND_TRIP, FAIL, "did not restore", f"{directory}: the saved state did not restore "
                                                                f"(damaged or unreadable)", metrics=metrics)
    differ = [path for path, a, b in _leaf_pairs(state, restored[0]) if not _same_bits(a, b)]
    if differ:
        return Observation(ROUND_TRIP, FAIL, f"{len(differ)} leaves differ", f"{directory}: restored leaves differ "
                                                                            f"bitwise: {', '.join(differ)}",
                           metrics=metrics)
    return Observation(ROUND_TRIP, PASS, f"bitwise, save {saved_s:.2f}/load {restored_s:.2f} s",
                       f"{directory}: saved and restored 3 sharded leaves, identical bit for bit on this host's "
                       f"shards", metrics=metrics)


def _leaf_pairs(saved, restored):
    import jax

    flat_saved, _ = jax.tree_util.tree_flatten_with_path(saved)
    flat_restored = jax.tree.leaves(restored)
    return [(jax.tree_util.keystr(path), a, b) for (path, a), b in zip(flat_saved, flat_restored, strict=True)]


def _same_bits(a, b) -> bool:
    """This host's shards of two arrays, compared as raw bytes."""
    mine = {s.device.id: np.asarray(s.data) for s in a.addressable_shards}
    theirs = {s.device.id: np.asarray(s.data) for s in b.addressable_shards}
    return mine.keys() == theirs.keys() and all(
        mine[d].dtype == theirs[d].dtype and mine[d].tobytes() == theirs[d].tobytes() for d in mine)


def remove_scratch(checkpoint_dir: str, run_id: str) -> None:
    from etils import epath

    path = epath.Path(scratch_dir(checkpoint_dir, run_id))
    if path.exists():
        path.rmtree()
    parent = path.parent
    if parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
