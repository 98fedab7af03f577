"""Checks that need no devices; device-dependent ones live in harness/runtime/mesh.py.

Messages name settings by the flag people type (`--batch_size`).
"""

from __future__ import annotations

import math

from harness.config.fields import settings
from harness.config.fields import TrainConfig
from harness.config.groups import ModelConfig
from harness.errors import UsageError
from harness.runtime.devices import PLATFORMS
from harness.models.names import BUILTIN_MODELS, PARAM_DTYPES, REMAT_POLICIES, TRANSFORMER_SIZES, is_import_path

NONFINITE_POLICIES = ("error", "skip")
POSITIVE = ("num_train_steps", "batch_size", "log_interval", "hard_example_log_interval",
            "max_hard_examples_buffer", "save_interval", "keep", "fsdp_devices",
            "hidden_dim", "num_layers", "image_size", "seq_len", "action_horizon",
            "max_steps_in_flight", "hard_example_image_size", "initialization_timeout",
            "heartbeat_timeout", "checkpoint_timeout", "num_slices")
NON_NEGATIVE = ("learning_rate", "weight_decay", "grad_clip_norm", "token_loss_weight")


def validate(config: TrainConfig) -> None:
    for name in POSITIVE:
        if config.setting(name) <= 0:
            raise UsageError(f"--{name} must be positive, got {config.setting(name)}")
    for row in settings():
        if row.kind == "float" and not math.isfinite(config.setting(row.flat)):
            raise UsageError(f"--{row.flat} must be a finite number, got {config.setting(row.flat)}")
    for name in NON_NEGATIVE:
        if config.setting(name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {config.setting(name)}")
    data = config.data
    if data.image_size % 4:
        raise UsageError(f"--image_size must be a multiple of 4, got {data.image_size}")
    if not 0.0 <= data.hard_fraction <= 1.0:
        raise UsageError(f"--hard_fraction must be in [0, 1], got {data.hard_fraction}")
    if not 0.0 <= config.model.dropout_rate < 1.0:
        raise UsageError(f"--dropout_rate must be in [0, 1), got {config.model.dropout_rate}")
    _check_choice("on_nonfinite", config.run.on_nonfinite, NONFINITE_POLICIES)
    _check_choice("platform", config.devices.platform, PLATFORMS)
    for name in ("checkpoint_dir", "run_dir"):
        if not config.setting(name).strip():
            raise UsageError(f"--{name} must not be empty")
    _validate_model(config.model)
    if config.checkpoint.resume and config.checkpoint.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pick one")
    if config.run.num_train_steps * data.batch_size >= 2**31:
        raise UsageError("num_train_steps * batch_size must stay below 2**31 (int32 sample ids)")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def _validate_model(model: ModelConfig) -> None:
    """Model choices; a user model (an import path) gets the settings as they are."""
    if model.name not in BUILTIN_MODELS and not is_import_path(model.name):
        raise UsageError(f"--model must be one of {', '.join(BUILTIN_MODELS)} or an import path "
                         f"like my_pkg.my_module:make_model, got {model.name!r}")
    _check_choice("param_dtype", model.param_dtype, PARAM_DTYPES)
    _check_choice("compute_dtype", model.compute_dtype, PARAM_DTYPES)
    _check_choice("remat", model.remat, REMAT_POLICIES)
    if model.name == "transformer" and model.size not in ("", *TRANSFORMER_SIZES):
        raise UsageError(f"unknown --model_size {model.size!r} (transformer sizes: "
                         f"{', '.join(TRANSFORMER_SIZES)}, or \"\" for --hidden_dim/--num_layers)")
    if model.name == "mlp":
        defaults = ModelConfig()
        for field, flag in (("size", "model_size"), ("param_dtype", "param_dtype"),
                            ("compute_dtype", "compute_dtype"), ("remat", "remat")):
            if getattr(model, field) != getattr(defaults, field):
                raise UsageError(f"--{flag} applies to --model transformer (or your own model), not the mlp")
