"""The run's configuration: one flat dataclass, named TOML presets, CLI overrides.

Presets live in `configs/NAME.toml`. A preset may start from another with
`base = "other"` and then set only the fields that differ (flax's `configs/tpu.py`
style). Unknown keys fail loudly, with the file and key named.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any, Mapping

from harness.errors import UsageError
from harness.models.names import BUILTIN_MODELS, PARAM_DTYPES, REMAT_POLICIES, TRANSFORMER_SIZES, is_import_path

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Loop and logging.
    num_train_steps: int = 100
    batch_size: int = 16
    log_interval: int = 10
    seed: int = 0
    run_dir: str = "/tmp/mock_training_run"
    max_steps_in_flight: int = 2
    on_nonfinite: str = "error"  # a nan/inf loss, gradient or parameter: "error" stops, "skip" drops the update
    testing_nonfinite_step: int = -1  # testing only: make this step's loss and gradients nan
    # Hard examples.
    track_hard_examples: bool = True
    hard_example_log_interval: int = 50
    max_hard_examples_buffer: int = 50
    hard_example_image_size: int = 64
    high_loss_threshold: float = 4.0
    record_per_sample_losses: bool = False  # debug/tests: <run_dir>/per_sample_losses.jsonl
    # Checkpoints.
    checkpoint_dir: str = "/tmp/mock_training_checkpoints"
    save_interval: int = 50
    keep: int = 3
    resume: bool = False
    overwrite: bool = False
    allow_fresh_start: bool = False  # --resume with only damaged checkpoints: start at 0
    async_checkpointing: bool = True
    checkpoint_timeout: int = 600  # s a save may wait on other hosts before failing
    gcs_max_retries: int = 32  # per GCS request (tensorstore's backoff: 1 s doubling to 32 s)
    # Mesh and devices.
    fsdp_devices: int = 1
    cpu_devices: int = 0  # >0: run on that many (fake) CPU devices; 0: JAX decides
    cpu_fast_compile: bool = True  # with cpu_devices: skip LLVM's expensive passes (faster compile)
    compilation_cache_dir: str = ""  # JAX persistent compilation cache ("" = off)
    # The TPU target harness-fit compiles for (harness/fit/topology.py); training uses the devices it finds.
    topology: str = ""  # a product (v5litepod-16) or a libtpu topology (v5e:4x4)
    chip_config: str = ""  # "" = the product's own (megacore on v4/v5p, default elsewhere)
    num_slices: int = 1  # slices joined over DCN (the mesh's `slice` axis)
    # Model and optimizer.
    model: str = "mlp"  # mlp | transformer | my_pkg.my_module:make_model (harness/models/)
    model_size: str = ""  # transformer: tiny|10m|100m|1b|3b|8b; "" = from hidden_dim/num_layers
    param_dtype: str = "float32"  # float32 | bfloat16 (optimizer moments follow)
    compute_dtype: str = "float32"  # float32 | bfloat16: activations and matmuls
    remat: str = "none"  # none | full | dots: recompute transformer blocks in the backward pass
    hidden_dim: int = 128
    num_layers: int = 2
    dropout_rate: float = 0.1
    token_loss_weight: float = 0.05
    learning_rate: float = 3e-3
    warmup_steps: int = 10
    grad_clip_norm: float = 1.0
    weight_decay: float = 1e-4
    # Mock data.
    image_size: int = 128
    num_cameras: int = 2
    seq_len: int = 128
    action_horizon: int = 4
    vocab_size: int = 256
    hard_fraction: float = 0.12
    # Distributed start-up (see harness/distributed.py); empty means "not given".
    distributed: str = "auto"
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    initialization_timeout: int = 300
    heartbeat_timeout: int = 60
    # wandb.
    use_wandb: bool = True
    wandb_project: str = "podharness"
    wandb_run_name: str = ""

    def replace(self, **changes: Any) -> "TrainConfig":
        return apply_overrides(self, changes, source="overrides")


NONFINITE_POLICIES = ("error", "skip")
FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_PYTHON_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _PYTHON_TYPES[FIELD_TYPES[name]]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{source}: '{name}' must be {kind.__name__}, got {value!r}")
    return value


def apply_overrides(config: TrainConfig, values: Mapping[str, Any], *, source: str) -> TrainConfig:
    """Returns `config` with `values` applied; unknown keys and wrong types fail."""
    unknown = sorted(set(values) - set(FIELD_TYPES))
    if unknown:
        raise UsageError(f"{source}: unknown config key(s): {', '.join(unknown)}")
    coerced = {name: _coerce(name, value, source) for name, value in values.items()}
    return dataclasses.replace(config, **coerced)


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))


def _preset_path(name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise UsageError(f"config file not found: {name}")
        return candidate
    path = CONFIGS_DIR / f"{name}.toml"
    if not path.is_file():
        raise UsageError(
            f"unknown preset '{name}' (available: {', '.join(available_presets()) or 'none'})"
        )
    return path


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> TrainConfig:
    """The config a preset names: its `base` chain applied in order onto the defaults."""
    path = _preset_path(name)
    if str(path) in _seen:
        raise UsageError(f"preset cycle: {' -> '.join(_seen + (str(path),))}")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: not valid TOML: {err}") from None
    base = values.pop("base", None)
    config = load_preset(base, _seen + (str(path),)) if base else TrainConfig()
    return apply_overrides(config, values, source=str(path))


def validate(config: TrainConfig) -> None:
    """Checks that need no devices; device-dependent checks live in harness/mesh.py."""
    positive = ("num_train_steps", "batch_size", "log_interval", "hard_example_log_interval",
                "max_hard_examples_buffer", "save_interval", "keep", "fsdp_devices",
                "hidden_dim", "num_layers", "image_size", "seq_len", "action_horizon",
                "max_steps_in_flight", "hard_example_image_size", "initialization_timeout",
                "heartbeat_timeout", "checkpoint_timeout", "num_slices")
    for name in positive:
        if getattr(config, name) <= 0:
            raise UsageError(f"--{name} must be positive, got {getattr(config, name)}")
    if config.image_size % 4:
        raise UsageError(f"--image_size must be a multiple of 4, got {config.image_size}")
    if not 0.0 <= config.hard_fraction <= 1.0:
        raise UsageError(f"--hard_fraction must be in [0, 1], got {config.hard_fraction}")
    if not 0.0 <= config.dropout_rate < 1.0:
        raise UsageError(f"--dropout_rate must be in [0, 1), got {config.dropout_rate}")
    for name, kind in FIELD_TYPES.items():
        if kind == "float" and not math.isfinite(getattr(config, name)):
            raise UsageError(f"--{name} must be a finite number, got {getattr(config, name)}")
    for name in ("learning_rate", "weight_decay", "grad_clip_norm", "token_loss_weight"):
        if getattr(config, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(config, name)}")
    if config.on_nonfinite not in NONFINITE_POLICIES:
        raise UsageError(f"--on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {config.on_nonfinite!r}")
    for name in ("checkpoint_dir", "run_dir"):
        if not getattr(config, name).strip():
            raise UsageError(f"--{name} must not be empty")
    _validate_model(config)
    if config.resume and config.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pick one")
    if config.num_train_steps * config.batch_size >= 2**31:
        raise UsageError("num_train_steps * batch_size must stay below 2**31 (int32 sample ids)")


def _validate_model(config: TrainConfig) -> None:
    """Model choices; a user model (an import path) gets the settings as they are."""
    if config.model not in BUILTIN_MODELS and not is_import_path(config.model):
        raise UsageError(f"--model must be one of {', '.join(BUILTIN_MODELS)} or an import path "
                         f"like my_pkg.my_module:make_model, got {config.model!r}")
    for name in ("param_dtype", "compute_dtype"):
        if getattr(config, name) not in PARAM_DTYPES:
            raise UsageError(f"--{name} must be one of {', '.join(PARAM_DTYPES)}, got {getattr(config, name)!r}")
    if config.remat not in REMAT_POLICIES:
        raise UsageError(f"--remat must be one of {', '.join(REMAT_POLICIES)}, got {config.remat!r}")
    if config.model == "transformer" and config.model_size not in ("", *TRANSFORMER_SIZES):
        raise UsageError(f"unknown --model_size {config.model_size!r} (transformer sizes: "
                         f"{', '.join(TRANSFORMER_SIZES)}, or \"\" for --hidden_dim/--num_layers)")
    if config.model == "mlp":
        defaults = TrainConfig()
        for name in ("model_size", "param_dtype", "compute_dtype", "remat"):
            if getattr(config, name) != getattr(defaults, name):
                raise UsageError(f"--{name} applies to --model transformer (or your own model), not the mlp")
