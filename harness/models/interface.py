"""The model interface: what the train step needs from a model, and nothing more.

A model module exposes a factory `make_model(spec: ModelSpec) -> Model`. The built-in
models (`mlp`, `transformer`) and a user's own (`--model my_pkg.my_module:make_model`,
see examples/user_model.py) are all loaded through `harness.models.registry.load_model`
and trained by the same jitted step (harness/train/step.py):

    model = make_model(spec)
    params = model.init(key)                               # any pytree of arrays
    out = model.per_sample_outputs(params, batch, dropout_key)
    out.loss                                               # (B,) float32, per sample

The step averages `out.loss` over valid samples and differentiates it; the per-sample
values feed the hard-example tracker, so a sample's loss must depend only on that
sample. Every parameter leaf is sharded over the mesh's `fsdp` axis by its shape
(`harness.runtime.mesh.fsdp_spec`: the largest axis `fsdp` divides), so give large
weights at least one axis that common `fsdp` sizes (powers of two) divide.

Optional: `train_flops(batch_size) -> float`, the analytic matmul FLOPs of one training
step (forward + backward) for a global batch; harness-fit reports it when present.

The step traces the model under its mesh (an abstract mesh context), so a model may pin
activations with `batch_sharded(x)`: FSDP gathers weights, never activations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
from jax.sharding import PartitionSpec as P

from harness.config import DataConfig, ModelConfig
from harness.mock.data import Batch

Params = Any  # a pytree of arrays


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a model is built from: its size and the shapes of the data it reads. Built
    from the run's config (`ModelSpec.of`), whose groups hold the defaults."""

    hidden_dim: int
    num_layers: int
    vocab_size: int
    seq_len: int
    num_cameras: int
    action_horizon: int
    dropout_rate: float
    token_loss_weight: float
    image_size: int
    model_size: str     # a named size (transformer); "" = from hidden_dim/num_layers
    param_dtype: str    # float32 | bfloat16
    compute_dtype: str
    remat: str          # none | full | dots (see harness/models/transformer.py)

    @classmethod
    def of(cls, model: ModelConfig, data: DataConfig) -> "ModelSpec":
        return cls(
            hidden_dim=model.hidden_dim, num_layers=model.num_layers, vocab_size=data.vocab_size,
            seq_len=data.seq_len, num_cameras=data.num_cameras, action_horizon=data.action_horizon,
            dropout_rate=model.dropout_rate, token_loss_weight=model.token_loss_weight,
            image_size=data.image_size, model_size=model.size, param_dtype=model.param_dtype,
            compute_dtype=model.compute_dtype, remat=model.remat,
        )


class SampleOutputs(NamedTuple):
    """Per-sample results, each shaped (B,): the loss the step minimises, and the token
    predictions scored and hit (the step reports their ratio as `token_acc`; a model
    without tokens returns zeros)."""

    loss: jax.Array
    token_hits: jax.Array
    token_count: jax.Array


@runtime_checkable
class Model(Protocol):
    def init(self, key: jax.Array) -> Params:
        """Fresh parameters; a pure function of `key` (the same on any mesh)."""

    def per_sample_outputs(self, params: Params, batch: Batch, dropout_key: jax.Array) -> SampleOutputs:
        """Per-sample loss and metrics of a (global, batch-sharded) batch."""


def batch_sharded(x: jax.Array) -> jax.Array:
    """`x` with its leading (batch) axis split over every mesh axis, like the batch.

    Without it the partitioner may follow a sharded weight instead and all-gather
    whole-batch activations, which no FSDP memory plan survives. Outside a mesh (a plain
    `jax.jit`, as in unit tests) it returns `x` unchanged.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, P(tuple(mesh.axis_names)))
