"""Can every host write where checkpoints go, and does a checkpoint come back bit for bit?

First, from every host, a probe object is written, read back, compared and deleted in
the checkpoint dir (local or gs://, through etils.epath as orbax uses it), each step
timed. Then, only if every host's probe passed (the hosts agree on that first, so none
waits in orbax's barriers for a host that cannot write), a small sharded state (float32,
bfloat16 and int32 leaves, FSDP-sharded like the real state) goes through the harness's
own CheckpointStore: save, restore onto the same shardings, and every host compares its
shards with what it saved, bit for bit (the store also verifies its checksums).

Everything lives under `<checkpoint_dir>/.podharness-preflight/<run id>/`, which
process 0 removes at the end; real checkpoints (numbered step directories) are never
touched.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np

from harness.preflight.faults import UNWRITABLE_CHECKPOINT_DIR, Fault
from harness.preflight.results import FAIL, PASS, ROUND_TRIP, STORAGE, Observation

SCRATCH = ".podharness-preflight"
PROBE_BYTES = 64 << 10


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
    """Save, restore, compare bitwise (a collective: every host calls it)."""
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
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
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
