"""The model's loss, FSDP layout on the mesh, and mesh invariance of the train step.

Runs on the 8 fake CPU devices tests/conftest.py sets up:

    .venv/bin/python -m pytest -q tests/test_model_and_mesh.py
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from harness.config import TrainConfig
from harness.data import MockDataset
from harness.mesh import BATCH_AXES, FSDP_AXIS, fsdp_spec, host_local_rows, make_global_batch, make_mesh
from harness.model import per_sample_outputs
from harness.train import data_spec
from harness.train_step import init_state, make_train_step, model_spec

CONFIG = TrainConfig(batch_size=16, image_size=32, hidden_dim=32, seq_len=64, warmup_steps=5,
                     fsdp_devices=8, use_wandb=False)
EVAL_SIZE = 512


def _hard_by_label_noise(actions: np.ndarray) -> np.ndarray:
    """Hard samples carry label-noise variance 3-9, easy ones 0.3-1.2 (see test_data.py)."""
    return actions.reshape(len(actions), -1).var(axis=1) > 2.2


@pytest.fixture(scope="module")
def eval_batch():
    """A large held-out batch (a seed no training run uses) and its hard-sample mask."""
    spec = dataclasses.replace(data_spec(CONFIG), global_batch_size=EVAL_SIZE)
    batch = MockDataset(spec, seed=99).batch_at(0)
    return batch, _hard_by_label_noise(batch.actions)


@pytest.fixture(scope="module")
def eval_loss():
    """Per-sample loss without dropout, on one device."""
    spec = dataclasses.replace(model_spec(CONFIG), dropout_rate=0.0)
    return jax.jit(lambda params, batch: per_sample_outputs(params, batch, spec, jax.random.PRNGKey(0))[0])


@pytest.fixture(scope="module")
def trained():
    """Initial params and params after 40 steps on the 8-device FSDP mesh."""
    mesh = make_mesh(CONFIG.fsdp_devices)
    state = init_state(CONFIG, mesh)
    initial = jax.device_get(state.params)
    step = make_train_step(CONFIG, mesh)
    dataset = MockDataset(data_spec(CONFIG), CONFIG.seed)
    for i in range(40):
        state, metrics = step(state, make_global_batch(dataset.batch_at(i), mesh))
        float(metrics["loss"])  # block: bounded steps in flight (ENVIRONMENT.md rendezvous abort)
    return initial, jax.device_get(state.params)


# Model.

def test_loss_depends_on_the_params(trained, eval_batch, eval_loss):
    initial, _ = trained
    batch, _ = eval_batch
    perturbed = {name: value + 0.01 for name, value in initial.items()}

    before, after = np.asarray(eval_loss(initial, batch)), np.asarray(eval_loss(perturbed, batch))

    assert (before != after).mean() > 0.99


def test_every_param_gets_a_gradient(trained, eval_batch, eval_loss):
    initial, _ = trained
    batch, _ = eval_batch

    grads = jax.grad(lambda params: eval_loss(params, batch).mean())(initial)

    assert set(grads) == set(initial)
    for name, grad in grads.items():
        assert grad.shape == initial[name].shape
        assert np.isfinite(grad).all(), name
        assert float(jnp.abs(grad).max()) > 0, name


def test_untrained_loss_separates_easy_and_hard_samples(trained, eval_batch, eval_loss):
    initial, _ = trained
    batch, hard = eval_batch

    loss = np.asarray(eval_loss(initial, batch))

    assert 0.06 < hard.mean() < 0.18  # hard_fraction 0.12 of 512 samples
    easy_in_band = ((loss[~hard] >= 0.3) & (loss[~hard] <= 2.5)).mean()
    hard_in_band = ((loss[hard] >= 2.5) & (loss[hard] <= 12.0)).mean()
    assert easy_in_band > 0.95, easy_in_band
    assert hard_in_band > 0.9, hard_in_band


def test_training_lowers_easy_losses_while_hard_ones_stay_high(trained, eval_batch, eval_loss):
    initial, final = trained
    batch, hard = eval_batch

    before, after = np.asarray(eval_loss(initial, batch)), np.asarray(eval_loss(final, batch))

    assert after[~hard].mean() < before[~hard].mean() - 0.05
    assert after[hard].mean() > 2.5
    assert ((after[~hard] >= 0.3) & (after[~hard] <= 2.5)).mean() > 0.95


def test_dropout_key_changes_the_loss_only_when_dropout_is_on(trained, eval_batch):
    initial, _ = trained
    batch, _ = eval_batch
    keys = jax.random.PRNGKey(1), jax.random.PRNGKey(2)

    def losses(rate):
        spec = dataclasses.replace(model_spec(CONFIG), dropout_rate=rate)
        return [np.asarray(per_sample_outputs(initial, batch, spec, key)[0]) for key in keys]

    with_dropout, without = losses(0.1), losses(0.0)

    assert not np.array_equal(*with_dropout)
    assert np.array_equal(*without)


# Mesh layout.

@pytest.mark.parametrize("shape, fsdp, expected", [
    ((256, 32), 8, P(FSDP_AXIS, None)),   # largest axis divides
    ((7, 32), 8, P(None, FSDP_AXIS)),     # largest does not: the next one
    ((32, 32), 8, P(FSDP_AXIS, None)),    # tie: the first
    ((28, 4, 12), 4, P(FSDP_AXIS, None, None)),
    ((30, 4, 12), 4, P(None, None, FSDP_AXIS)),
    ((32,), 8, P(FSDP_AXIS)),
    ((7, 9), 8, P()),                     # nothing divides: replicate
    ((4,), 8, P()),
    ((), 8, P()),                         # scalars
    ((256, 32), 1, P()),                  # no fsdp
])
def test_fsdp_spec_shards_the_largest_divisible_axis(shape, fsdp, expected):
    assert fsdp_spec(shape, fsdp) == expected


def _adam_moments(opt_state):
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0].mu, found[0].nu


@pytest.mark.parametrize("fsdp", [2, 8])
def test_params_and_adam_moments_are_sharded_over_fsdp(fsdp):
    config = CONFIG.replace(fsdp_devices=fsdp)
    mesh = make_mesh(fsdp)
    state = init_state(config, mesh)
    mu, nu = _adam_moments(state.opt_state)

    assert dict(mesh.shape) == {"data": 8 // fsdp, "fsdp": fsdp}
    for tree_name, tree in (("params", state.params), ("mu", mu), ("nu", nu)):
        for name, leaf in tree.items():
            expected = fsdp_spec(leaf.shape, fsdp)
            assert leaf.sharding.spec == expected, (tree_name, name)
            shard_shapes = {s.data.shape for s in leaf.addressable_shards}
            assert len(leaf.addressable_shards) == 8
            if FSDP_AXIS in expected:
                axis = list(expected).index(FSDP_AXIS)
                want = leaf.shape[:axis] + (leaf.shape[axis] // fsdp,) + leaf.shape[axis + 1:]
                assert shard_shapes == {want}, (tree_name, name)
                assert {s.data.size for s in leaf.addressable_shards} == {leaf.size // fsdp}
            else:
                assert shard_shapes == {leaf.shape}, (tree_name, name)
    # With hidden_dim 32 and vocab 256, every kernel and embedding divides by 8.
    sharded = [name for name, leaf in state.params.items() if FSDP_AXIS in leaf.sharding.spec]
    assert set(sharded) == set(state.params)
    assert state.step.sharding.spec == P() and state.rng.sharding.spec == P()


def test_train_step_keeps_the_state_layout():
    mesh = make_mesh(8)
    state = init_state(CONFIG, mesh)
    specs = jax.tree.map(lambda x: x.sharding.spec, state)
    step = make_train_step(CONFIG, mesh)
    batch = make_global_batch(MockDataset(data_spec(CONFIG), 0).batch_at(0), mesh)

    new_state, metrics = step(state, batch)

    assert jax.tree.map(lambda x: x.sharding.spec, new_state) == specs
    assert int(new_state.step) == 1
    assert state.params["token_embed"].is_deleted()  # donated
    assert metrics["per_sample_loss"].sharding.spec == P(BATCH_AXES)
    assert np.array_equal(host_local_rows(metrics["sample_id"]), np.arange(16))


@pytest.mark.parametrize("fsdp", [1, 2, 8])
def test_global_batch_is_split_over_all_devices_and_reads_back_in_order(fsdp):
    mesh = make_mesh(fsdp)
    local = MockDataset(data_spec(CONFIG), seed=0).batch_at(3)

    batch = make_global_batch(local, mesh)

    for leaf, local_leaf in zip(jax.tree.leaves(batch), jax.tree.leaves(local)):
        assert leaf.sharding.spec == P(BATCH_AXES)
        shards = leaf.addressable_shards
        assert len({s.device for s in shards}) == 8
        assert {s.data.shape for s in shards} == {(2,) + local_leaf.shape[1:]}
        assert sorted(s.index[0].start for s in shards) == list(range(0, 16, 2))
        assert np.array_equal(host_local_rows(leaf), local_leaf)
    assert host_local_rows(batch.sample_id).tolist() == list(range(48, 64))


def test_host_local_rows_reads_each_replicated_row_once():
    mesh = make_mesh(2)  # data=4, fsdp=2: rows split over data, replicated over fsdp
    rows = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    array = jax.device_put(rows, NamedSharding(mesh, P("data")))

    assert len(array.addressable_shards) == 8
    assert np.array_equal(host_local_rows(array), rows)


# Mesh invariance: the same config trains the same on any (data, fsdp) split.

INVARIANCE_STEPS = 10


def _losses(config: TrainConfig, mesh: Mesh) -> np.ndarray:
    state = init_state(config, mesh)
    step = make_train_step(config, mesh)
    dataset = MockDataset(data_spec(config), config.seed)
    losses = []
    for i in range(INVARIANCE_STEPS):
        state, metrics = step(state, make_global_batch(dataset.batch_at(i), mesh))
        losses.append(float(metrics["loss"]))
    return np.asarray(losses)


@pytest.fixture(scope="module")
def single_device_losses():
    """The oracle: the same steps on a 1x1 mesh of one device (no sharding at all)."""
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), BATCH_AXES)
    return _losses(CONFIG.replace(fsdp_devices=1), mesh)


@pytest.mark.parametrize("fsdp", [1, 2, 4, 8])
def test_losses_do_not_depend_on_the_mesh(single_device_losses, fsdp):
    losses = _losses(CONFIG.replace(fsdp_devices=fsdp), make_mesh(fsdp))

    relative = np.abs(losses - single_device_losses) / np.abs(single_device_losses)
    assert relative.max() <= 1e-5, (losses, single_device_losses)
    assert losses[-1] < losses[0]  # and it trains
