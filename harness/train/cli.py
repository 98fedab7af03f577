"""Command line: flags -> TrainConfig -> checks -> `harness.train.train`.

    harness-train --config cpu-8-devices --num_train_steps 100 --batch_size 16

Precedence: dataclass defaults < `--config` preset < flags given on the command line.
Bad input (unknown preset, indivisible batch, unwritable checkpoint dir, ...) prints one
line on stderr and exits 2 before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from harness.config import FIELD_TYPES, TrainConfig, apply_overrides, load_preset, validate
from harness.errors import HostLostError, NonFiniteStateError, UsageError

PROG = "harness-train"

# For fake CPU devices: LLVM's expensive passes buy the mock model nothing. Measured
# (8 devices, 2 cores): init + step compile ~4.2 s instead of ~5.4 s, same step time;
# level 0 compiles no faster and steps ~50% slower. bench/process_cost.py compares.
CPU_FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=1", "--xla_llvm_disable_expensive_passes=true")

# Seed-compatible negative flags: flag -> (field, value it sets).
NEGATIVE_FLAGS = {
    "no_hard_examples": ("track_hard_examples", False),
    "no_wandb": ("use_wandb", False),
    "sync_checkpointing": ("async_checkpointing", False),
    "no_cpu_fast_compile": ("cpu_fast_compile", False),
}


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                             argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="preset name in configs/ (or a .toml path)")
    negated = {field for field, _ in NEGATIVE_FLAGS.values()}
    for name, kind in FIELD_TYPES.items():
        if kind == "bool":
            if name not in negated:  # a default-true switch has only its --no_ form
                parser.add_argument(f"--{name}", action="store_true")
        else:
            caster = {"int": int, "float": float, "str": str}[kind]
            default = getattr(TrainConfig(), name)
            parser.add_argument(f"--{name}", type=caster, metavar=kind.upper(),
                                help=f"default {default!r}")
    for flag, (field, value) in NEGATIVE_FLAGS.items():
        parser.add_argument(f"--{flag}", dest=field, action="store_const", const=value)
    return parser


def parse_config(argv: Sequence[str]) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("config", None)
    config = load_preset(preset) if preset else TrainConfig()
    config = apply_overrides(config, args, source="command line")
    validate(config)
    return config


def configure_devices(config: TrainConfig) -> None:
    """Fake CPU devices, compile flags and the compilation cache. Must run before JAX
    starts its backend (benchmarks call it too, so they measure what users run)."""
    if config.cpu_devices > 0 and config.cpu_fast_compile:
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *CPU_FAST_COMPILE_FLAGS]).strip()

    import jax

    if config.cpu_devices > 0:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", config.cpu_devices)
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def prepare_runtime(config: TrainConfig) -> None:
    """Everything that must happen before JAX picks its devices, then the checks that
    need devices. Raises UsageError; writes nothing."""
    from harness.runtime import storage

    storage.configure_gcs_emulator_from_env()
    configure_devices(config)

    from harness.runtime import distributed
    from harness.runtime.mesh import check_topology

    distributed.initialize(
        config.distributed,
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        initialization_timeout=config.initialization_timeout,
        heartbeat_timeout=config.heartbeat_timeout,
    )
    check_topology(config.batch_size, config.fsdp_devices)
    if storage.is_gcs_path(config.checkpoint_dir):
        storage.configure_orbax_gcs_retries(storage.GcsRetryPolicy(max_retries=config.gcs_max_retries))
    problem = storage.checkpoint_path_writable(config.checkpoint_dir)
    if problem:
        raise UsageError(f"checkpoint dir {config.checkpoint_dir}: {problem}")
    _check_existing_checkpoints(config)


def _check_existing_checkpoints(config: TrainConfig) -> None:
    from harness.runtime.checkpoint import existing_steps

    steps = existing_steps(config.checkpoint_dir)
    if steps and not (config.resume or config.overwrite):
        raise UsageError(
            f"{config.checkpoint_dir} already holds checkpoints (latest step {steps[-1]}): "
            f"pass --resume to continue or --overwrite to start over"
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = parse_config(argv)
        prepare_runtime(config)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code

    from harness.runtime.checkpoint import delete_all
    from harness.train.loop import train

    if config.overwrite:
        delete_all(config.checkpoint_dir)
    try:
        train(config)
    except (UsageError, NonFiniteStateError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except HostLostError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(err.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
