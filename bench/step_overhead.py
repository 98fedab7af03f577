"""Harness steady-state step time vs a bare jitted loop (same model, batch, mesh).

    python -m bench.step_overhead [--steps 60 --repeats 3]
    python -m bench.step_overhead --tiny      # seconds: what the test suite runs

Both run on 8 fake CPU devices with FSDP over all of them, batch 16, in the same
process, alternating (bare, harness, bare, harness, ...) so machine noise hits both.
The harness side is the real run, `harness.train.loop.train` (data generation, global
batch assembly, metric readback, logging, hard-example tracking), with checkpoints and
hard-example gathers pushed past the end: those are measured in their own benchmarks. Two baselines: the
bare loop on one fixed batch (no input pipeline at all), and the bare loop fed by the
harness's input pipeline (a fresh mock batch built and transferred every step, in the
prefetch thread), which isolates what the harness's own logic costs. Steady state: the
first 10 steps of each block (compilation) are not timed (2 with --tiny, which runs one
round of 6 steps: it proves the benchmark runs, its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import jax

from bench.common import median, trainer_seconds_per_step

WARMUP = 10
TINY = {"steps": 6, "repeats": 1, "warmup": 2}


def _timed_bare_loop(config, batches, warmup: int) -> float:
    """Seconds per step of a plain jitted loop over `(step, global batch)` pairs, with the
    same bound on steps in flight as the harness (harness/train/loop.py says why)."""
    from harness.runtime.mesh import make_mesh
    from harness.train.step import init_state, make_train_step

    mesh = make_mesh(config.mesh.fsdp_devices)
    state = init_state(config, mesh)
    step_fn = make_train_step(config, mesh)
    in_flight: collections.deque = collections.deque()
    start, timed = 0.0, 0
    for step, batch in batches:
        if step == warmup:
            jax.block_until_ready(in_flight[-1]["loss"])
            in_flight.clear()
            start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        timed += step >= warmup
        in_flight.append(metrics)
        if len(in_flight) >= config.run.max_steps_in_flight:
            float(in_flight.popleft()["loss"])
    while in_flight:
        float(in_flight.popleft()["loss"])
    return (time.perf_counter() - start) / timed


def bare_block(config, steps: int, warmup: int) -> float:
    """The bare loop on one pre-built global batch: no input pipeline at all."""
    from harness.mock.data import MockDataset
    from harness.runtime.mesh import make_global_batch, make_mesh

    batch = make_global_batch(MockDataset(config.data, config.run.seed).batch_at(0),
                              make_mesh(config.mesh.fsdp_devices))
    return _timed_bare_loop(config, ((step, batch) for step in range(steps)), warmup)


def bare_with_data_block(config, steps: int, warmup: int) -> float:
    """The bare loop, but each step gets a fresh batch from the harness's prefetcher."""
    from harness.mock.data import MockDataset
    from harness.runtime.mesh import make_global_batch, make_mesh
    from harness.train.prefetch import Prefetcher

    mesh = make_mesh(config.mesh.fsdp_devices)
    dataset = MockDataset(config.data, config.run.seed)
    batches = Prefetcher(lambda s: make_global_batch(dataset.batch_at(s), mesh), range(steps),
                         depth=config.run.max_steps_in_flight)
    try:
        return _timed_bare_loop(config, batches, warmup)
    finally:
        batches.close()


def harness_block(config, steps: int, warmup: int) -> float:
    """Seconds per step of the real training loop, timed between finished steps."""
    return trainer_seconds_per_step(config.replace(num_train_steps=steps), warmup=warmup)


def measure(steps: int, repeats: int, warmup: int = WARMUP) -> dict:
    from harness.config import TrainConfig

    config = TrainConfig().replace(
        batch_size=16, fsdp_devices=8, save_interval=10**6, hard_example_log_interval=10**6,
        log_interval=10, use_wandb=False, num_train_steps=steps,
    )
    bare, fed, harness = [], [], []
    for _ in range(repeats):
        bare.append(bare_block(config, steps, warmup))
        fed.append(bare_with_data_block(config, steps, warmup))
        harness.append(harness_block(config, steps, warmup))
    vs_bare = [h / b for h, b in zip(harness, bare)]
    vs_fed = [h / f for h, f in zip(harness, fed)]
    return {
        "bare_step_ms": [round(1e3 * b, 2) for b in bare],
        "bare_with_input_pipeline_step_ms": [round(1e3 * f, 2) for f in fed],
        "harness_step_ms": [round(1e3 * h, 2) for h in harness],
        "harness_over_bare_median": round(median(vs_bare), 3),
        "harness_over_bare_with_input_pipeline_median": round(median(vs_fed), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="one short round, to prove it runs")
    args = parser.parse_args()
    from harness.runtime.devices import configure_devices

    configure_devices(cpu_devices=8)
    result = measure(**TINY) if args.tiny else measure(args.steps, args.repeats)
    print("harness step / bare jitted step (8 fake devices, batch 16):", json.dumps(result))
    print("RESULT " + json.dumps({"step_overhead": result}))


if __name__ == "__main__":
    main()
