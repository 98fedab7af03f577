"""Everything between a parsed config and the first step: the runtime (GCS emulator,
devices, `jax.distributed`), then the start-up checks that need it.

Every check runs on every host and the verdict is agreed (harness/runtime/agree.py):
one bad host makes every host exit 2 with the same line, before anything is written.
"""

from __future__ import annotations

from harness.config import TrainConfig
from harness.errors import CheckpointUnreadableError, UsageError
from harness.runtime import distributed, storage
from harness.runtime.agree import agreed_problem
from harness.runtime.devices import check_platform, configure_devices
from harness.runtime.memory import available_host_bytes, format_bytes

# A batch is alive on the host this many times over per step in flight: in the prefetch
# queue, being built, as the host copy a step keeps for the tracker, and (on CPU
# devices) as the global array itself.
BATCH_COPIES_PER_STEP_IN_FLIGHT = 3
# The part of the available memory the batches may take; the rest is the model,
# optimizer, XLA and the Python process itself.
BATCH_MEMORY_SHARE = 0.5


def prepare_runtime(config: TrainConfig) -> None:
    """Starts the runtime and runs the start-up checks. Raises UsageError or, when the
    checkpoints could not be listed, CheckpointUnreadableError (each the same on every
    host), or TpuUnavailableError on a host whose TPU did not come up; writes nothing."""
    storage.configure_gcs_emulator_from_env()
    platform = configure_devices(platform=config.devices.platform, cpu_devices=config.devices.cpu_devices,
                                 cpu_fast_compile=config.devices.cpu_fast_compile,
                                 compilation_cache_dir=config.devices.compilation_cache_dir)
    distributed.initialize(
        config.distributed.mode,
        coordinator_address=config.distributed.coordinator_address,
        num_processes=config.distributed.num_processes,
        process_id=config.distributed.process_id,
        initialization_timeout=config.distributed.initialization_timeout,
        heartbeat_timeout=config.distributed.heartbeat_timeout,
    )
    check_platform(platform)
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
    """This host's first failing check, as one line, or None."""
    from harness.runtime.mesh import check_topology

    try:
        check_topology(config.data.batch_size, config.mesh.fsdp_devices)
    except UsageError as err:
        return str(err)
    checks = (_model_problem, _batch_memory_problem, _run_dir_problem, _checkpoint_dir_problem,
              _existing_checkpoints_problem)
    for check in checks:
        problem = check(config)
        if problem:
            return problem
    return None


def _model_problem(config: TrainConfig) -> str | None:
    """A `--model` import path that fails is bad input like any other: before the banner."""
    from harness.train.step import build_model

    try:
        build_model(config)
    except UsageError as err:
        return str(err)
    return None


def _batch_memory_problem(config: TrainConfig) -> str | None:
    import jax

    from harness.mock.data import sample_bytes

    per_batch = sample_bytes(config.data) * (config.data.batch_size // jax.process_count())
    needed = per_batch * BATCH_COPIES_PER_STEP_IN_FLIGHT * (config.run.max_steps_in_flight + 1)
    available = available_host_bytes()
    if available is None or needed <= BATCH_MEMORY_SHARE * available:
        return None
    return (f"--batch_size={config.data.batch_size} needs ~{format_bytes(needed)} of host memory for its batches "
            f"({format_bytes(per_batch)} per host batch, {config.run.max_steps_in_flight} steps in flight), "
            f"more than half of the {format_bytes(available)} available")


def _run_dir_problem(config: TrainConfig) -> str | None:
    if storage.is_gcs_path(config.run.run_dir):
        return f"run dir {config.run.run_dir}: must be a local directory (checkpoints can go to gs://)"
    problem = storage.checkpoint_path_writable(config.run.run_dir)
    return f"run dir {config.run.run_dir}: {problem}" if problem else None


def _checkpoint_dir_problem(config: TrainConfig) -> str | None:
    if storage.is_gcs_path(config.checkpoint.dir):
        storage.configure_orbax_gcs_retries(storage.GcsRetryPolicy(max_retries=config.checkpoint.gcs_max_retries))
    problem = storage.checkpoint_path_writable(config.checkpoint.dir)
    return f"checkpoint dir {config.checkpoint.dir}: {problem}" if problem else None


def _existing_checkpoints_problem(config: TrainConfig) -> str | None:
    from harness.runtime.checkpoint import existing_steps

    steps = existing_steps(config.checkpoint.dir)
    if steps and not (config.checkpoint.resume or config.checkpoint.overwrite):
        return (f"{config.checkpoint.dir} already holds checkpoints (latest step {steps[-1]}): "
                f"pass --resume to continue or --overwrite to start over")
    return None
