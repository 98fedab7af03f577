"""The transformer VLA mock: its sizes, its FSDP layout, its loss, and that it trains in
the real loop with the MLP's guarantees (mesh invariance, exact resume).

Runs on the 8 fake CPU devices tests/conftest.py sets up:

    .venv/bin/python -m pytest -q tests/test_models_transformer.py
    .venv/bin/python -m pytest -q -m soak tests/test_models_transformer.py   # remat dots/offload, fsdp 2/4, resume
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from harness.config import TrainConfig
from harness.models.names import TRANSFORMER_SIZES
from harness.models.transformer import VlaTransformer
from harness.outputs.sinks import read_metrics
from harness.runtime.mesh import BATCH_AXES, FSDP_AXIS, fsdp_spec, make_mesh
from harness.models.interface import ModelSpec
from harness.train.step import build_model, init_state, state_shardings
from tests.support.runs import compile_cache_flags, failure_report, run_harness
from tests.support.training import held_out_batch, losses_from, train_steps

# A custom size (hidden 64 -> one 64-wide head, 2 layers) on small images: seconds on CPU.
CONFIG = TrainConfig().replace(model="transformer", hidden_dim=64, num_layers=2, batch_size=16, image_size=32, seq_len=64,
                     warmup_steps=5, fsdp_devices=8, use_wandb=False)
EVAL_SIZE = 256
STEPS = 30
INVARIANCE_STEPS = 8



@pytest.fixture(scope="module")
def eval_batch():
    return held_out_batch(CONFIG.data, EVAL_SIZE)


@pytest.fixture(scope="module")
def eval_loss():
    model = build_model(CONFIG.replace(dropout_rate=0.0))
    return jax.jit(lambda params, batch: model.per_sample_outputs(params, batch, jax.random.PRNGKey(0)).loss)


@pytest.fixture(scope="module")
def trained():
    """STEPS steps on the 8-device mesh (fsdp=8): initial params, final params, losses."""
    mesh = make_mesh(CONFIG.mesh.fsdp_devices)
    state = init_state(CONFIG, mesh)
    initial = jax.device_get(state)
    state, losses, _ = train_steps(CONFIG, mesh, state, STEPS)
    return initial, jax.device_get(state.params), losses


# Sizes and layout (shapes only: nothing is allocated).

def _shapes(size: str) -> dict[str, tuple[int, ...]]:
    spec = dataclasses.replace(ModelSpec.of(CONFIG.model, CONFIG.data), model_size=size, image_size=224, seq_len=128)
    shapes = VlaTransformer(spec).param_shapes()
    flat = jax.tree.flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]
    return {jax.tree_util.keystr(path): shape for path, shape in flat}


@pytest.mark.parametrize("size, low, high", [("tiny", 0.4e6, 1e6), ("10m", 8e6, 12e6), ("100m", 80e6, 120e6),
                                             ("1b", 0.9e9, 1.1e9), ("3b", 2.7e9, 3.3e9), ("8b", 7.8e9, 8.5e9)])
def test_named_sizes_have_the_parameter_counts_their_names_say(size, low, high):
    count = sum(math.prod(shape) for shape in _shapes(size).values())

    assert low <= count <= high, count


@pytest.mark.parametrize("size", [s for s in TRANSFORMER_SIZES if s != "tiny"])
@pytest.mark.parametrize("fsdp", [4, 16, 64, 256])
def test_fsdp_rule_shards_every_large_weight_and_never_the_layer_axis(size, fsdp):
    """Every weight of 2^20+ elements is split over `fsdp` (1/fsdp per device), and the
    stacked blocks' leading layer axis stays whole (scan slices it every layer)."""
    for name, shape in _shapes(size).items():
        spec = fsdp_spec(shape, fsdp)
        if math.prod(shape) >= 1 << 20:
            assert FSDP_AXIS in spec, (name, shape, spec)
        if "blocks" in name:
            assert spec == () or spec[0] is None, (name, shape, spec)


def test_the_layout_on_the_mesh_is_the_fsdp_rule(trained):
    mesh = make_mesh(8)
    shardings = state_shardings(CONFIG, mesh)
    initial = trained[0]

    for leaf, sharding in zip(jax.tree.leaves(initial.params), jax.tree.leaves(shardings.params)):
        assert sharding.spec == fsdp_spec(leaf.shape, 8)


def test_param_and_compute_dtypes(eval_batch):
    model = build_model(CONFIG.replace(param_dtype="bfloat16", compute_dtype="bfloat16"))
    params = model.init(jax.random.PRNGKey(0))
    batch, _ = eval_batch

    out = jax.jit(model.per_sample_outputs)(params, batch, jax.random.PRNGKey(1))

    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert out.loss.dtype == jnp.float32 and np.isfinite(np.asarray(out.loss)).all()


# Loss.

def test_untrained_loss_separates_easy_and_hard_samples(trained, eval_batch, eval_loss):
    batch, hard = eval_batch

    loss = np.asarray(eval_loss(trained[0].params, batch))

    assert ((loss[~hard] >= 0.3) & (loss[~hard] <= 2.5)).mean() > 0.95
    assert ((loss[hard] >= 2.5) & (loss[hard] <= 12.0)).mean() > 0.9


def test_training_lowers_easy_losses_while_hard_ones_stay_high(trained, eval_batch, eval_loss):
    initial, final, losses = trained
    batch, hard = eval_batch

    before, after = np.asarray(eval_loss(initial.params, batch)), np.asarray(eval_loss(final, batch))

    assert after[~hard].mean() < before[~hard].mean() - 0.05
    assert after[hard].mean() > 2.5
    assert losses[-5:].mean() < losses[:5].mean()


def test_every_param_gets_a_gradient(trained, eval_batch, eval_loss):
    batch, _ = eval_batch

    grads = jax.grad(lambda params: eval_loss(params, batch).mean())(trained[0].params)

    for path, grad in jax.tree.flatten_with_path(grads)[0]:
        assert np.isfinite(grad).all() and float(jnp.abs(grad).max()) > 0, jax.tree_util.keystr(path)


def test_attention_is_prefix_lm(eval_batch):
    """Images, state and task words see each other; the language action is causal; the
    action query sees every real token and nothing sees it; padding is seen by no one."""
    model = build_model(CONFIG)
    batch, _ = eval_batch
    mask = np.asarray(model._attention_mask(batch))[0]
    ar = np.asarray(batch.token_ar_mask[0])
    real = np.asarray(batch.tokenized_prompt_mask[0])
    start = model.text_start
    prefix = list(range(start)) + [start + i for i in np.flatnonzero(real & ~ar)]
    action = [start + i for i in np.flatnonzero(ar)]

    assert mask[np.ix_(prefix, prefix)].all()
    assert not mask[np.ix_(prefix, action)].any()
    assert (mask[np.ix_(action, action)] == np.tril(np.ones((len(action),) * 2, bool))).all()
    assert mask[-1, :-1].sum() == real.sum() + start and not mask[:-1, -1].any()
    assert not mask[:, [start + i for i in np.flatnonzero(~real)]].any()


@pytest.mark.parametrize("remat", ["full", pytest.param("dots", marks=pytest.mark.soak),
                                   pytest.param("offload", marks=pytest.mark.soak)])
def test_remat_recomputes_the_same_loss_and_gradients(trained, eval_batch, remat):
    batch, _ = eval_batch
    params = trained[0].params

    def loss_and_grads(config):
        model = build_model(config)
        loss = lambda p: model.per_sample_outputs(p, batch, jax.random.PRNGKey(3)).loss.mean()
        return jax.jit(jax.value_and_grad(loss))(params)

    (plain, plain_grads), (recomputed, grads) = loss_and_grads(CONFIG), loss_and_grads(CONFIG.replace(remat=remat))

    assert abs(float(plain) - float(recomputed)) <= 1e-6 * abs(float(plain))
    for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# The loop's guarantees.

@pytest.fixture(scope="module")
def single_device_losses(trained):
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), BATCH_AXES)
    return losses_from(CONFIG.replace(fsdp_devices=1), mesh, trained[0], INVARIANCE_STEPS)


@pytest.mark.parametrize("fsdp", [1, pytest.param(2, marks=pytest.mark.soak), pytest.param(4, marks=pytest.mark.soak), 8])
def test_losses_do_not_depend_on_the_mesh(trained, single_device_losses, fsdp):
    losses = (trained[2][:INVARIANCE_STEPS] if fsdp == CONFIG.mesh.fsdp_devices
              else losses_from(CONFIG.replace(fsdp_devices=fsdp), make_mesh(fsdp), trained[0], INVARIANCE_STEPS))

    relative = np.abs(losses - single_device_losses) / np.abs(single_device_losses)
    assert relative.max() <= 1e-5, (losses, single_device_losses)


@pytest.mark.soak  # the MLP's exact resume is in the default suite (test_resume.py and others)
def test_resume_in_harness_train_is_exact(tmp_path):
    """12 steps straight vs 6 steps, then --resume to 12: the same metrics, bit for bit."""
    model_args = ["--model", "transformer", "--hidden_dim", "64", "--log_interval", "1", "--no_wandb",
                  "--no_hard_examples", "--save_interval", "6", *compile_cache_flags(tmp_path / "cache")]

    def run(root, *extra):
        result = run_harness(["--config", "smoke", *model_args, "--checkpoint_dir", str(root / "ckpt"),
                              "--run_dir", str(root / "run"), *extra])
        assert result.returncode == 0, failure_report(result)
        return result

    run(tmp_path / "straight", "--num_train_steps", "12")
    run(tmp_path / "resumed", "--num_train_steps", "6")
    resumed = run(tmp_path / "resumed", "--num_train_steps", "12", "--resume")

    assert "Resumed from checkpoint at step 6" in resumed.stdout
    straight = read_metrics(tmp_path / "straight" / "run" / "metrics.jsonl")
    assert read_metrics(tmp_path / "resumed" / "run" / "metrics.jsonl")[-6:] == straight[-6:]
