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
from harness.mock.data import MockDataset
from harness.runtime.mesh import BATCH_AXES, FSDP_AXIS, fsdp_spec, host_local_rows, make_global_batch, make_mesh
from harness.models.mlp import per_sample_outputs
from harness.models.interface import ModelSpec
from harness.train.step import TrainState, init_state
from tests.support.training import held_out_batch, losses_from, train_steps

CONFIG = TrainConfig().replace(batch_size=16, image_size=32, hidden_dim=32, seq_len=64, warmup_steps=5,
                     fsdp_devices=8, use_wandb=False)
EVAL_SIZE = 512



@pytest.fixture(scope="module")
def eval_batch():
    return held_out_batch(CONFIG.data, EVAL_SIZE)


@pytest.fixture(scope="module")
def eval_loss():
    """Per-sample loss without dropout, on one device."""
    spec = dataclasses.replace(ModelSpec.of(CONFIG.model, CONFIG.data), dropout_rate=0.0)
    return jax.jit(lambda params, batch: per_sample_outputs(params, batch, spec, jax.random.PRNGKey(0))[0])


@dataclasses.dataclass
class Trained:
    initial_state: TrainState   # host copies
    final_params: dict
    losses: np.ndarray
    layout_before: dict         # tree name -> leaf name -> (spec, shard shapes)
    layout_after: dict
    params_donated: bool
    first_step_metrics: dict    # per_sample_loss spec and host-local sample ids


def _layout(state: TrainState) -> dict:
    """Where every leaf lives: its PartitionSpec and the shapes of its 8 device shards."""
    mu, nu = _adam_moments(state.opt_state)
    trees = {"params": state.params, "mu": mu, "nu": nu,
             "scalars": {"step": state.step, "rng": state.rng}}
    return {
        tree_name: {name: (leaf.sharding.spec, [s.data.shape for s in leaf.addressable_shards])
                    for name, leaf in tree.items()}
        for tree_name, tree in trees.items()
    }


def _adam_moments(opt_state):
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0].mu, found[0].nu


@pytest.fixture(scope="module")
def trained() -> Trained:
    """40 steps on the 8-device FSDP mesh (fsdp=8), the module's one real training run."""
    mesh = make_mesh(CONFIG.mesh.fsdp_devices)
    state = init_state(CONFIG, mesh)
    initial_state, layout_before = jax.device_get(state), _layout(state)
    first_params = state.params
    state, losses, first = train_steps(CONFIG, mesh, state, 40)
    return Trained(
        initial_state=initial_state, final_params=jax.device_get(state.params), losses=losses,
        layout_before=layout_before, layout_after=_layout(state),
        params_donated=all(leaf.is_deleted() for leaf in first_params.values()),
        first_step_metrics={"per_sample_loss_spec": first["per_sample_loss"].sharding.spec,
                            "sample_id": host_local_rows(first["sample_id"])},
    )


# Model.

def test_loss_depends_on_the_params(trained, eval_batch, eval_loss):
    initial = trained.initial_state.params
    batch, _ = eval_batch
    perturbed = {name: value + 0.01 for name, value in initial.items()}

    before, after = np.asarray(eval_loss(initial, batch)), np.asarray(eval_loss(perturbed, batch))

    assert (before != after).mean() > 0.99


def test_every_param_gets_a_gradient(trained, eval_batch, eval_loss):
    initial = trained.initial_state.params
    batch, _ = eval_batch

    grads = jax.grad(lambda params: eval_loss(params, batch).mean())(initial)

    assert set(grads) == set(initial)
    for name, grad in grads.items():
        assert grad.shape == initial[name].shape
        assert np.isfinite(grad).all(), name
        assert float(jnp.abs(grad).max()) > 0, name


def test_untrained_loss_separates_easy_and_hard_samples(trained, eval_batch, eval_loss):
    initial = trained.initial_state.params
    batch, hard = eval_batch

    loss = np.asarray(eval_loss(initial, batch))

    assert 0.06 < hard.mean() < 0.18  # hard_fraction 0.12 of 512 samples
    easy_in_band = ((loss[~hard] >= 0.3) & (loss[~hard] <= 2.5)).mean()
    hard_in_band = ((loss[hard] >= 2.5) & (loss[hard] <= 12.0)).mean()
    assert easy_in_band > 0.95, easy_in_band
    assert hard_in_band > 0.9, hard_in_band


def test_training_lowers_easy_losses_while_hard_ones_stay_high(trained, eval_batch, eval_loss):
    initial, final = trained.initial_state.params, trained.final_params
    batch, hard = eval_batch

    before, after = np.asarray(eval_loss(initial, batch)), np.asarray(eval_loss(final, batch))

    assert after[~hard].mean() < before[~hard].mean() - 0.05
    assert after[hard].mean() > 2.5
    assert ((after[~hard] >= 0.3) & (after[~hard] <= 2.5)).mean() > 0.95


def test_dropout_key_changes_the_loss_only_when_dropout_is_on(trained, eval_batch):
    initial = trained.initial_state.params
    batch, _ = eval_batch
    keys = jax.random.PRNGKey(1), jax.random.PRNGKey(2)

    def losses(rate):
        spec = dataclasses.replace(ModelSpec.of(CONFIG.model, CONFIG.data), dropout_rate=rate)
        loss = jax.jit(lambda params, batch, key: per_sample_outputs(params, batch, spec, key)[0])
        return [np.asarray(loss(initial, batch, key)) for key in keys]

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


def _assert_fsdp_layout(layout: dict, shapes: dict, fsdp: int) -> None:
    for tree_name in ("params", "mu", "nu"):
        for name, (spec, shard_shapes) in layout[tree_name].items():
            shape = shapes[name]
            assert spec == fsdp_spec(shape, fsdp), (tree_name, name)
            assert FSDP_AXIS in spec, (tree_name, name)  # hidden 32, vocab 256: all divide by 8
            axis = list(spec).index(FSDP_AXIS)
            one_slice = shape[:axis] + (shape[axis] // fsdp,) + shape[axis + 1:]
            assert shard_shapes == [one_slice] * 8, (tree_name, name)  # 1/fsdp on each device


def test_params_and_adam_moments_are_sharded_over_fsdp_8(trained):
    shapes = {name: leaf.shape for name, leaf in trained.initial_state.params.items()}

    _assert_fsdp_layout(trained.layout_before, shapes, 8)
    assert trained.layout_after == trained.layout_before  # the step keeps the layout


@pytest.fixture(scope="module")
def fsdp_2_layout():
    mesh = make_mesh(2)
    state = init_state(CONFIG.replace(fsdp_devices=2), mesh)
    return dict(mesh.shape), _layout(state), {n: leaf.shape for n, leaf in state.params.items()}


def test_params_and_adam_moments_are_sharded_over_fsdp_2(fsdp_2_layout):
    mesh_shape, layout, shapes = fsdp_2_layout

    assert mesh_shape == {"data": 4, "fsdp": 2}
    _assert_fsdp_layout(layout, shapes, 2)


@pytest.mark.parametrize("fsdp", [2, 8])
def test_step_counter_and_rng_are_replicated(trained, fsdp_2_layout, fsdp):
    """train_step.state_shardings promises "scalars and the rng replicated"."""
    layout = trained.layout_before if fsdp == 8 else fsdp_2_layout[1]

    assert layout["scalars"]["step"] == (P(), [()] * 8)
    assert layout["scalars"]["rng"] == (P(), [(2,)] * 8)


def test_train_step_donates_the_state_and_returns_batch_sharded_rows(trained):
    assert trained.params_donated
    assert trained.first_step_metrics["per_sample_loss_spec"] == P(BATCH_AXES)
    assert trained.first_step_metrics["sample_id"].tolist() == list(range(16))


@pytest.mark.parametrize("fsdp", [1, 2, 8])
def test_global_batch_is_split_over_all_devices_and_reads_back_in_order(fsdp):
    mesh = make_mesh(fsdp)
    local = MockDataset(CONFIG.data, seed=0).batch_at(3)

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


@pytest.fixture(scope="module")
def single_device_losses(trained):
    """The oracle: the same steps on a 1x1 mesh of one device (no sharding at all)."""
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), BATCH_AXES)
    return losses_from(CONFIG.replace(fsdp_devices=1), mesh, trained.initial_state, INVARIANCE_STEPS)


@pytest.mark.parametrize("fsdp", [1, pytest.param(2, marks=pytest.mark.soak), 4, 8])
def test_losses_do_not_depend_on_the_mesh(trained, single_device_losses, fsdp):
    if fsdp == CONFIG.mesh.fsdp_devices:  # the module's training run already did these steps
        losses = trained.losses[:INVARIANCE_STEPS]
    else:
        losses = losses_from(CONFIG.replace(fsdp_devices=fsdp), make_mesh(fsdp), trained.initial_state,
                             INVARIANCE_STEPS)

    relative = np.abs(losses - single_device_losses) / np.abs(single_device_losses)
    assert relative.max() <= 1e-5, (losses, single_device_losses)
    assert losses[-1] < losses[0]  # and it trains
