"""Training state, optimizer and the one jitted train step.

The step is compiled once with explicit in/out shardings and donates the state, so the
params and optimizer state are updated in place on every device (big_vision style).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from harness.config import TrainConfig
from harness.config.groups import OptimizerConfig
from harness.mock.data import Batch
from harness.runtime.mesh import batch_sharding, fsdp_shardings, replicated
from harness.models.interface import Model, ModelSpec
from harness.models.registry import load_model


class TrainState(NamedTuple):
    step: jax.Array        # int32 scalar: steps completed
    params: Any
    opt_state: Any
    rng: jax.Array         # uint32[2]: advanced every step (dropout)


def build_model(config: TrainConfig) -> Model:
    """The run's model (`--model`: built-in or import path), behind the model interface."""
    return load_model(config.model.name, ModelSpec.of(config.model, config.data))


def make_optimizer(optimizer: OptimizerConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup, behind global-norm clipping (0 disables clipping)."""
    schedule = optax.linear_schedule(0.0, optimizer.learning_rate, max(optimizer.warmup_steps, 1))
    adamw = optax.adamw(schedule, weight_decay=optimizer.weight_decay)
    if optimizer.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optimizer.grad_clip_norm), adamw)
    return adamw


def _init_fn(config: TrainConfig, optimizer: optax.GradientTransformation) -> Callable[[], TrainState]:
    def init() -> TrainState:
        init_key, rng = jax.random.split(jax.random.PRNGKey(config.run.seed))
        params = build_model(config).init(init_key)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)

    return init


def state_shardings(config: TrainConfig, mesh: Mesh) -> TrainState:
    """FSDP shardings for params and optimizer state; the step counter and the rng key
    are replicated (splitting a 2-word key across devices saves nothing)."""
    abstract = jax.eval_shape(_init_fn(config, make_optimizer(config.optimizer)))
    shardings = fsdp_shardings(abstract, mesh)
    return shardings._replace(step=replicated(mesh), rng=replicated(mesh))


def abstract_state(config: TrainConfig, mesh: Mesh) -> TrainState:
    """ShapeDtypeStructs with target shardings: what a checkpoint restores into."""
    abstract = jax.eval_shape(_init_fn(config, make_optimizer(config.optimizer)))
    shardings = state_shardings(config, mesh)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def init_state(config: TrainConfig, mesh: Mesh) -> TrainState:
    """A fresh state, created directly in its sharded layout (optimizer moments too)."""
    init = _init_fn(config, make_optimizer(config.optimizer))
    return jax.jit(init, out_shardings=state_shardings(config, mesh))()


StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict]]


def make_train_step(config: TrainConfig, mesh: Mesh) -> StepFn:
    """The jitted step: (state, global batch) -> (new state, metrics).

    Metrics are replicated scalars plus the batch-sharded `per_sample_loss` and
    `sample_id`, which each host reads from its own shards to pair losses with samples.
    """
    model = build_model(config)
    optimizer = make_optimizer(config.optimizer)
    skip_nonfinite = config.run.on_nonfinite == "skip"

    def loss_fn(params, batch: Batch, dropout_key):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # lets models pin activations (batch_sharded)
            per_sample_loss, token_hits, token_count = model.per_sample_outputs(params, batch, dropout_key)
        valid = batch.sample_mask.astype(jnp.float32)
        loss = (per_sample_loss * valid).sum() / jnp.maximum(valid.sum(), 1.0)
        return loss, (per_sample_loss, token_hits, token_count)

    def step(state: TrainState, batch: Batch):
        rng, dropout_key = jax.random.split(state.rng)
        (loss, (per_sample_loss, token_hits, token_count)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params, batch, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm, param_norm = optax.tree.norm(grads), optax.tree.norm(params)
        skip_metrics = {}
        if skip_nonfinite:  # keep the old params and moments when anything went nan/inf
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
            params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                             (params, opt_state), (state.params, state.opt_state))
            param_norm = optax.tree.norm(params)
            skip_metrics["update_skipped"] = ~ok
        valid = batch.sample_mask
        metrics = {
            **skip_metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            "param_norm": param_norm,
            "token_acc": (token_hits * valid).sum() / jnp.maximum((token_count * valid).sum(), 1.0),
            "max_per_sample_loss": jnp.max(jnp.where(valid, per_sample_loss, -jnp.inf)),
            "per_sample_loss": per_sample_loss,
            "sample_id": batch.sample_id,
        }
        return TrainState(state.step + 1, params, opt_state, rng), metrics

    state_sh = state_shardings(config, mesh)
    rows, scalar = batch_sharding(mesh), replicated(mesh)
    metric_sh = {name: scalar for name in ("loss", "grad_norm", "param_norm", "token_acc", "max_per_sample_loss")}
    metric_sh |= {"per_sample_loss": rows, "sample_id": rows}
    if skip_nonfinite:
        metric_sh["update_skipped"] = scalar
    if config.run.testing_nonfinite_step >= 0:
        step = nan_inputs_at(step, config.run.testing_nonfinite_step)
    return jax.jit(
        step,
        in_shardings=(state_sh, rows),
        out_shardings=(state_sh, metric_sh),
        donate_argnums=0,
    )


def nan_inputs_at(step: StepFn, nan_step: int) -> StepFn:
    """Fault injection, only with `--testing_nonfinite_step`: that step's robot state and
    target actions are nan, as bad data would make them, so its loss and gradients are
    nan. Wrapped around the step instead of inside it, so that without the flag the
    program is exactly the one production runs."""

    def poisoned(state: TrainState, batch: Batch):
        poison = jnp.where(state.step == nan_step, jnp.nan, 1.0)
        return step(state, batch._replace(state=batch.state * poison, actions=batch.actions * poison))

    return poisoned
