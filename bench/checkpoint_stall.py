"""How long training stalls for a checkpoint, with and without the checksums, and what
each way of checksumming copies off the devices.

    python -m bench.checkpoint_stall [--repeats 5]

The state is the harness's own TrainState (params + adam moments) made big enough to
matter (hidden 512, vocab 4096: ~50 MB with the optimizer), on 8 fake CPU devices. In
each round, side by side:
- the stall of an async save (the time the loop is blocked) without checksums (orbax's
  `CheckpointManager.save` alone, with the store's options) and with them
  (`CheckpointStore.save`: checksums and non-finite check, then the same save);
- a synchronous save (`save()` + `wait()`), and how much slower the next 10 steps ran
  while the async write went on in the background (on 2 cores the writer competes with
  the step for CPU);
- the checksums alone, the harness's way (`integrity.inspect_state`: one program on the
  devices, 12 bytes per leaf fetched) and the way they were computed before 2026-12-06
  (every shard copied to host memory and summed with numpy, kept here as the reference).
The bytes each checksum way copies from the devices are counted from the state.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import jax
import numpy as np

from bench.common import median

STEPS_AFTER = 10
SUMMARY_BYTES_PER_LEAF = 12  # integrity.py's (a, b, non-finite count) as uint32


def host_copy_checksums(tree: Any) -> list[tuple[int, int]]:
    """The previous way, for comparison: each host copies its shards to host memory and
    sums their bits with numpy (the same two sums; 64-bit types not handled here)."""
    sums = []
    for leaf in jax.tree.leaves(tree):
        a = b = np.uint32(0)
        for shard in leaf.addressable_shards:
            if shard.replica_id != 0:
                continue
            block = np.asarray(shard.data)
            unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[block.dtype.itemsize]
            bits = block.view(unsigned).astype(np.uint32).reshape(-1)
            index = np.zeros(block.shape, dtype=np.uint32)
            stride = 1
            for dim in reversed(range(block.ndim)):
                start = shard.index[dim].start or 0
                positions = ((np.arange(block.shape[dim], dtype=np.uint64) + start) * stride).astype(np.uint32)
                index += positions.reshape([-1 if d == dim else 1 for d in range(block.ndim)])
                stride *= leaf.shape[dim]
            index = index.reshape(-1)
            mixed = (index ^ (index >> 16)) * np.uint32(0x9E3779B9)
            with np.errstate(over="ignore"):
                a += np.sum(bits * (2 * index + 1), dtype=np.uint32)
                b += np.sum((bits ^ mixed) * (2 * mixed + 1), dtype=np.uint32)
        sums.append((int(a), int(b)))
    return sums


def copied_bytes(tree: Any) -> int:
    """Bytes the host-copy way moves off this host's devices (one copy of each shard)."""
    return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards if s.replica_id == 0)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure(repeats: int) -> dict:
    from harness.runtime.devices import configure_devices

    configure_devices(cpu_devices=8)
    import orbax.checkpoint as ocp
    from etils import epath

    from harness.config import TrainConfig
    from harness.mock.data import MockDataset
    from harness.runtime.checkpoint import META_ITEM, STATE_ITEM, CheckpointStore
    from harness.runtime.integrity import inspect_state
    from harness.runtime.mesh import make_global_batch, make_mesh
    from harness.train.step import init_state, make_train_step

    config = TrainConfig().replace(batch_size=16, fsdp_devices=8, hidden_dim=512, vocab_size=4096, image_size=64)
    mesh = make_mesh(config.mesh.fsdp_devices)
    state = init_state(config, mesh)
    step_fn = make_train_step(config, mesh)
    batch = make_global_batch(MockDataset(config.data, 0).batch_at(0), mesh)
    leaves = jax.tree.leaves(state)
    state_bytes = sum(x.nbytes for x in leaves)

    def run_steps(n: int) -> float:
        nonlocal state
        start = time.perf_counter()
        for _ in range(n):
            state, metrics = step_fn(state, batch)
            float(metrics["loss"])
        return time.perf_counter() - start

    run_steps(5)  # compile
    device_way, host_way = inspect_state(state)[0], host_copy_checksums(state)  # compile; and they must agree
    assert [tuple(int(h, 16) for h in v.split("-")) for v in device_way.values()] == host_way
    rows: dict[str, list[float]] = {k: [] for k in ("stall_without", "stall_with", "sync", "during", "device", "host")}
    with tempfile.TemporaryDirectory() as tmp:
        bare = ocp.CheckpointManager(epath.Path(f"{tmp}/bare"), item_names=(STATE_ITEM, META_ITEM),
                                     options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        async_store = CheckpointStore(f"{tmp}/async", keep=2, async_save=True)
        sync_store = CheckpointStore(f"{tmp}/sync", keep=2, async_save=False)
        for i in range(repeats):
            items = {STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave({"step": i + 1})}
            rows["stall_without"].append(timed(lambda: bare.save(i + 1, args=ocp.args.Composite(**items))))
            bare.wait_until_finished()
            baseline = run_steps(STEPS_AFTER)
            rows["stall_with"].append(timed(async_store.save, i + 1, state, {"step": i + 1}))
            rows["during"].append(run_steps(STEPS_AFTER) - baseline)
            async_store.wait()
            rows["sync"].append(timed(lambda: (sync_store.save(i + 1, state, {"step": i + 1}), sync_store.wait())))
            rows["device"].append(timed(inspect_state, state))
            rows["host"].append(timed(host_copy_checksums, state))
        bare.close()
        async_store.close()
        sync_store.close()

    def ms(key: str) -> list[float]:
        return [round(1e3 * x, 1) for x in rows[key]]

    def ratio(top: str, bottom: str) -> float:
        return round(median([a / b for a, b in zip(rows[top], rows[bottom])]), 3)

    host_bytes, device_bytes = copied_bytes(state), SUMMARY_BYTES_PER_LEAF * len(leaves)
    return {
        "state_mb": round(state_bytes / 2**20, 1),
        "leaves": len(leaves),
        "async_stall_without_checksums_ms": ms("stall_without"),
        "async_stall_ms": ms("stall_with"),
        "stall_with_over_without_checksums_median": ratio("stall_with", "stall_without"),
        "sync_save_ms": ms("sync"),
        "stall_ratio_median": ratio("stall_with", "sync"),
        "steps_during_write_extra_ms": ms("during"),
        "checksum_ms": ms("device"),
        "checksum_host_copy_ms": ms("host"),
        "checksum_device_over_host_copy_median": ratio("device", "host"),
        "checksum_device_to_host_bytes": device_bytes,
        "checksum_host_copy_device_to_host_bytes": host_bytes,
        "checksum_bytes_ratio": round(device_bytes / host_bytes, 8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    result = measure(parser.parse_args().repeats)
    print("async checkpoint stall / sync save:", result["stall_ratio_median"], "| async stall with / without "
          f"checksums: {result['stall_with_over_without_checksums_median']} | checksums on the devices / host copy: "
          f"{result['checksum_device_over_host_copy_median']} in time, {result['checksum_device_to_host_bytes']} / "
          f"{result['checksum_host_copy_device_to_host_bytes']} bytes off the devices")
    print("RESULT " + json.dumps({"checkpoint_stall": result}))


if __name__ == "__main__":
    main()
