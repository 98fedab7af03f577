"""Everything between a parsed config and building the run: the runtime (GCS emulator,
devices, `jax.distributed`: `start_runtime`), then the start-up checks that need it
(`check_startup`).

Every check runs on every host and the verdict is agreed (harness/runtime/agree.py):
one bad host makes every host exit 2 with the same line, before anything is written.
"""

from __future__ import annotations

import jax

from harness.config import TrainConfig
from harness.config.groups import DevicesConfig, DistributedConfig
from harness.errors import CheckpointUnreadableError, UsageError
from harness.mock.data import sample_bytes
from harness.runtime import distributed, storage
from harness.runtime.agree import agreed_problem
from harness.runtime.checkpoint import existing_steps
from harness.runtime.devices import check_platform, configure_devices
from harness.runtime.memory import available_host_bytes, format_bytes
from harness.runtime.mesh import check_topology
from harness.train.step import build_model

# A batch is alive on the host this many times over per step in flight: in the prefetch
# queue, being built, as the host copy a step keeps for the tracker, and (on CPU
# devices) as the global array itself.
BATCH_COPIES_PER_STEP_IN_FLIGHT = 3
# The part of the available memory the batches may take; the rest is the model,
# optimizer, XLA and the Python process itself.
BATCH_MEMORY_SHARE = 0.5


def start_runtime(devices: DevicesConfig, distributed_config: DistributedConfig) -> None:
    """The GCS emulator (if one is set), JAX's devices and `jax.distributed`: what every
    later step stands on. Raises UsageError for bad distributed settings, or
    TpuUnavailableError on a host whose TPU did not come up; writes nothing."""
    storage.configure_gcs_emulator_from_env()
    platform = configure_devices(platform=devices.platform, cpu_devices=devices.cpu_devices,
                                 cpu_fast_compile=devices.cpu_fast_compile,
                                 compilation_cache_dir=devices.compilation_cache_dir)
    distributed.initialize(
        distributed_config.mode,
        coordinator_address=distributed_config.coordinator_address,
        num_processes=distributed_config.num_processes,
        process_id=distributed_config.process_id,
        initialization_timeout=distributed_config.initialization_timeout,
        heartbeat_timeout=distributed_config.heartbeat_timeout,
    )
    check_platform(platform)


def check_startup(config: TrainConfig) -> None:
    """Runs the start-up checks on every host and agrees on the verdict. Raises
    UsageError or, when the checkpoints could not be listed, CheckpointUnreadableError
    (each the same on every host); writes nothing."""
    try:
        problem, unreadable = _first_problem(config), None
    except CheckpointUnreadableError as err:  # storage, not bad input: exit 42, not 2
        problem, unreadable = None, str(err)
    unreadable = agreed_problem(unreadable)
    if unreadable:
        raise CheckpointUnreadableError(unreadable)
    problem = agreed_problem(problem)
    if problem:
        raise UsageError(problem)


def _first_problem(config: TrainConfig) -> str | None:
    """This host's first failing check, as one line, or None. In order: the batch over
    the mesh; the model (a `--model` import path that fails is bad input like any other);
    the batches' host memory; the run and checkpoint dirs; checkpoints already there."""
    try:
        check_topology(config.data.batch_size, config.mesh.fsdp_devices)
        build_model(config)
    except UsageError as err:
        return str(err)

    per_batch = sample_bytes(config.data) * (config.data.batch_size // jax.process_count())
    needed = per_batch * BATCH_COPIES_PER_STEP_IN_FLIGHT * (config.run.max_steps_in_flight + 1)
    available = available_host_bytes()
    if available is not None and needed > BATCH_MEMORY_SHARE * available:
        return (f"--batch_size={config.data.batch_size} needs ~{format_bytes(needed)} of host memory for its batches "
                f"({format_bytes(per_batch)} per host batch, {config.run.max_steps_in_flight} steps in flight), "
                f"more than half of the {format_bytes(available)} available")

    run_dir, checkpoint_dir = config.run.run_dir, config.checkpoint.dir
    if storage.is_gcs_path(run_dir):
        return f"run dir {run_dir}: must be a local directory (checkpoints can go to gs://)"
    problem = storage.checkpoint_path_writable(run_dir)
    if problem:
        return f"run dir {run_dir}: {problem}"
    if storage.is_gcs_path(checkpoint_dir):
        storage.configure_orbax_gcs_retries(storage.GcsRetryPolicy(max_retries=config.checkpoint.gcs_max_retries))
    problem = storage.checkpoint_path_writable(checkpoint_dir)
    if problem:
        return f"checkpoint dir {checkpoint_dir}: {problem}"

    steps = existing_steps(checkpoint_dir)
    if steps and not (config.checkpoint.resume or config.checkpoint.overwrite):
        return (f"{checkpoint_dir} already holds checkpoints (latest step {steps[-1]}): "
                f"pass --resume to continue or --overwrite to start over")
    return None
