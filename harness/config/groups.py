"""The run's settings, in groups; every default is written here and nowhere else.
The whole config (`TrainConfig`, one field per group) is in fields.py, with each
setting's names.

A preset sets them as TOML tables (`[data] batch_size = 64`), the command line as
`--data.batch_size 64` or by the flat name every setting also has (`--batch_size 64`,
the seed's spelling). A field whose flat name differs from its own says so with
`flag(...)`; every other field's flat name is its own name.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def flag(default: Any, name: str) -> Any:
    """A field whose flat command-line name (and seed spelling) is `name`."""
    return dataclasses.field(default=default, metadata={"flag": name})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The loop: how long, how often it reports, what a non-finite step does."""

    num_train_steps: int = 100
    log_interval: int = 10
    seed: int = 0
    run_dir: str = "/tmp/mock_training_run"
    max_steps_in_flight: int = 2
    on_nonfinite: str = "error"  # a nan/inf loss, gradient or parameter: "error" stops, "skip" drops the update
    testing_nonfinite_step: int = -1  # testing only: make this step's loss and gradients nan


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What a (mock) batch looks like; `batch_size` is global, over every host."""

    batch_size: int = 16
    image_size: int = 128
    num_cameras: int = 2
    seq_len: int = 128
    action_horizon: int = 4
    vocab_size: int = 256
    hard_fraction: float = 0.12


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model and how big (harness/models/)."""

    name: str = flag("mlp", "model")  # mlp | transformer | my_pkg.my_module:make_model
    size: str = flag("", "model_size")  # transformer: tiny|10m|100m|1b|3b|8b; "" = from hidden_dim/num_layers
    param_dtype: str = "float32"  # float32 | bfloat16 (optimizer moments follow)
    compute_dtype: str = "float32"  # float32 | bfloat16: activations and matmuls
    remat: str = "none"  # none | full | dots | offload: recompute (or offload) transformer blocks in the backward pass
    hidden_dim: int = 128
    num_layers: int = 2
    dropout_rate: float = 0.1
    token_loss_weight: float = 0.05


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW whose learning rate rises linearly from 0 over `warmup_steps`, then stays at
    `learning_rate` (no decay), behind global-norm clipping at `grad_clip_norm` (0: none)."""

    learning_rate: float = 3e-3
    warmup_steps: int = 10
    grad_clip_norm: float = 1.0
    weight_decay: float = 1e-4


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often orbax saves, and what a start does with what is there."""

    dir: str = flag("/tmp/mock_training_checkpoints", "checkpoint_dir")  # local path or gs://
    save_interval: int = 50
    keep: int = 3
    resume: bool = False
    overwrite: bool = False
    allow_fresh_start: bool = False  # --resume with only damaged checkpoints: start at 0
    async_save: bool = flag(True, "async_checkpointing")
    timeout: int = flag(600, "checkpoint_timeout")  # s a save may wait on other hosts before failing
    gcs_max_retries: int = 32  # per GCS request (tensorstore's backoff: 1 s doubling to 32 s)


@dataclasses.dataclass(frozen=True)
class HardExamplesConfig:
    """The top-K tracker, its cross-host gather and what it writes."""

    enabled: bool = flag(True, "track_hard_examples")
    log_interval: int = flag(50, "hard_example_log_interval")
    buffer_size: int = flag(50, "max_hard_examples_buffer")
    image_size: int = flag(64, "hard_example_image_size")
    high_loss_threshold: float = 4.0
    record_per_sample_losses: bool = False  # debug/tests: <run_dir>/per_sample_losses.jsonl


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """How the devices are arranged: FSDP groups, and slices joined over DCN."""

    fsdp_devices: int = 1
    num_slices: int = 1


@dataclasses.dataclass(frozen=True)
class DevicesConfig:
    """The JAX backend on this host."""

    platform: str = "auto"  # auto (JAX_PLATFORMS if set, else tpu with TPU device files, else cpu) | cpu | tpu
    cpu_devices: int = 0  # >0: run on that many (fake) CPU devices
    cpu_fast_compile: bool = True  # with cpu_devices: skip LLVM's expensive passes (faster compile)
    compilation_cache_dir: str = ""  # JAX persistent compilation cache ("" = off)


@dataclasses.dataclass(frozen=True)
class TpuConfig:
    """The TPU target harness-fit compiles for (harness/fit/topology.py); training uses
    the devices it finds."""

    topology: str = ""  # a product (v5litepod-16) or a libtpu topology (v5e:4x4)
    chip_config: str = ""  # "" = the product's own (megacore on v4/v5p, default elsewhere)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`jax.distributed` start-up (harness/runtime/distributed.py); empty means not given."""

    mode: str = flag("auto", "distributed")  # auto | pod | off
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    initialization_timeout: int = 300
    heartbeat_timeout: int = 60


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """wandb logging (offline unless WANDB_MODE says otherwise)."""

    enabled: bool = flag(True, "use_wandb")
    project: str = flag("podharness", "wandb_project")
    run_name: str = flag("", "wandb_run_name")
