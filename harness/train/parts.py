"""A run's parts, built once before the restore: the console, the mesh, the input
pipeline, the checkpoint store and the hard-example reporter, and the banner that
announces them. Every host builds the same parts in the same order (the store's
listing is a collective).

    with build_parts(config) as parts:   # leaving on an error releases orbax's threads
        ...
"""

from __future__ import annotations

import dataclasses

import jax

from harness.config import TrainConfig
from harness.errors import CheckpointSaveError, HostLostError
from harness.hard_examples.reporter import HardExampleReporter
from harness.hard_examples.tracker import HardExampleTracker
from harness.mock.data import Batch, MockDataset
from harness.outputs.sinks import Console
from harness.runtime.checkpoint import CheckpointStore
from harness.runtime.mesh import make_global_batch, make_mesh
from harness.train.pipeline import InputPipeline

BANNER_RULE = "=" * 80


@dataclasses.dataclass(frozen=True)
class RunParts:
    config: TrainConfig
    console: Console
    mesh: jax.sharding.Mesh
    dataset: MockDataset
    pipeline: InputPipeline
    store: CheckpointStore
    reporter: HardExampleReporter | None  # None without --track_hard_examples

    def __enter__(self) -> RunParts:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """A failed run closes the store, so orbax's threads do not outlive it; not after
        a lost host or a failed save, where orbax's barriers could hang on that peer."""
        if error is not None and not isinstance(error, (HostLostError, CheckpointSaveError)):
            self.store.close()

    def batches_for(self, step: int) -> tuple[Batch, Batch, dict]:
        """The next host-local batch, its global array, and the pipeline state after it
        (the prefetch thread calls it once per step, in step order)."""
        local_batch = next(self.pipeline)
        return local_batch, make_global_batch(local_batch, self.mesh), self.pipeline.state()


def build_parts(config: TrainConfig) -> RunParts:
    console = Console.for_this_process()
    mesh = make_mesh(config.mesh.fsdp_devices)
    dataset = MockDataset(config.data, config.run.seed, jax.process_index(), jax.process_count())
    pipeline = InputPipeline(dataset)
    store = CheckpointStore(config.checkpoint.dir, keep=config.checkpoint.keep,
                            async_save=config.checkpoint.async_save, timeout_s=config.checkpoint.timeout)
    reporter = None
    if config.hard_examples.enabled:
        tracker = HardExampleTracker(
            config.hard_examples.buffer_size, dataset.tokenizer, host=jax.process_index(),
            resize_hw=(config.hard_examples.image_size, config.hard_examples.image_size),
            high_loss_threshold=config.hard_examples.high_loss_threshold,
        )
        reporter = HardExampleReporter(tracker, interval=config.hard_examples.log_interval,
                                       k=config.hard_examples.buffer_size, total_steps=config.run.num_train_steps)
    return RunParts(config, console, mesh, dataset, pipeline, store, reporter)


def print_banner(parts: RunParts) -> None:
    config, console = parts.config, parts.console
    console.print(BANNER_RULE)
    console.print("MOCK TRAINING")
    console.print(BANNER_RULE)
    console.print("Configuration:")
    rows = [
        ("Steps", config.run.num_train_steps),
        ("Batch size", config.data.batch_size),
        ("Log interval", config.run.log_interval),
        ("Track hard examples", config.hard_examples.enabled),
        ("Checkpoint dir", config.checkpoint.dir),
        ("Run dir", config.run.run_dir),
        ("Processes", f"{jax.process_count()} x {jax.local_device_count()} {jax.default_backend()} devices"),
        ("Mesh", ", ".join(f"{k}={v}" for k, v in parts.mesh.shape.items())),
    ]
    for label, value in rows:
        console.print(f"  {label}: {value}")
    console.print(BANNER_RULE)
