"""How long training stalls for a checkpoint: async save vs synchronous save.

    python -m bench.checkpoint_stall [--repeats 5]

The state is the harness's own TrainState (params + adam moments) made big enough to
matter (hidden 512, vocab 4096: ~50 MB with the optimizer), on 8 fake CPU devices.
Stall of an async save = the time `CheckpointStore.save()` blocks the loop (the device
-> host copy); sync save = `save()` + `wait()` with async checkpointing off. Reported
apart: how much slower the next 10 steps ran while the write went on in the background
(on 2 cores the writer competes with the step for CPU). Saves alternate async/sync.
Also the part of every save spent on the integrity checksums and the non-finite check
(`inspect_state`, run on the devices), timed alone beside each save.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax

from bench.common import median

STEPS_AFTER = 10


def measure(repeats: int) -> dict:
    from harness.runtime.devices import configure_devices

    configure_devices(cpu_devices=8)
    from harness.runtime.checkpoint import CheckpointStore
    from harness.runtime.integrity import inspect_state
    from harness.config import TrainConfig
    from harness.mock.data import MockDataset
    from harness.runtime.mesh import make_global_batch, make_mesh
    from harness.train.step import init_state, make_train_step

    config = TrainConfig().replace(batch_size=16, fsdp_devices=8, hidden_dim=512, vocab_size=4096, image_size=64)
    mesh = make_mesh(config.mesh.fsdp_devices)
    state = init_state(config, mesh)
    step_fn = make_train_step(config, mesh)
    batch = make_global_batch(MockDataset(config.data, 0).batch_at(0), mesh)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

    def run_steps(n: int) -> float:
        nonlocal state
        start = time.perf_counter()
        for _ in range(n):
            state, metrics = step_fn(state, batch)
            float(metrics["loss"])
        return time.perf_counter() - start

    run_steps(5)  # compile
    inspect_state(state)  # compile
    async_stalls, sync_times, baselines, slowdowns, inspections = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        async_store = CheckpointStore(f"{tmp}/async", keep=2, async_save=True)
        sync_store = CheckpointStore(f"{tmp}/sync", keep=2, async_save=False)
        for i in range(repeats):
            baselines.append(run_steps(STEPS_AFTER))
            t0 = time.perf_counter()
            async_store.save(i + 1, state, {"step": i + 1})
            blocked = time.perf_counter() - t0
            during = run_steps(STEPS_AFTER)
            async_store.wait()
            async_stalls.append(blocked)
            slowdowns.append(during - baselines[-1])
            t0 = time.perf_counter()
            sync_store.save(i + 1, state, {"step": i + 1})
            sync_store.wait()
            sync_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            inspect_state(state)
            inspections.append(time.perf_counter() - t0)
        async_store.close()
        sync_store.close()
    ratios = [a / s for a, s in zip(async_stalls, sync_times)]
    return {
        "state_mb": round(state_bytes / 2**20, 1),
        "async_stall_ms": [round(1e3 * x, 1) for x in async_stalls],
        "sync_save_ms": [round(1e3 * x, 1) for x in sync_times],
        "stall_ratio_median": round(median(ratios), 3),
        "steps_during_write_extra_ms": [round(1e3 * x, 1) for x in slowdowns],
        "checksum_ms": [round(1e3 * x, 1) for x in inspections],
        "checksum_share_of_sync_save_median": round(median([c / s for c, s in zip(inspections, sync_times)]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    result = measure(parser.parse_args().repeats)
    print("async checkpoint stall / sync save:", json.dumps(result))
    print("RESULT " + json.dumps({"checkpoint_stall": result}))


if __name__ == "__main__":
    main()
