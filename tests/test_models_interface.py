"""The model interface: built-ins and a user's model load through one path, bad names
and paths are one-line usage errors, and the model settings are validated.

    .venv/bin/python -m pytest -q tests/test_models_interface.py
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from harness.config import TrainConfig, validate
from harness.errors import UsageError
from harness.mock.data import MockDataset
from harness.models.interface import ModelSpec, Model, SampleOutputs
from harness.models.mlp import VlaMlp
from harness.models.registry import load_model
from harness.models.transformer import VlaTransformer
from harness.outputs.sinks import read_metrics
from harness.train.step import build_model
from tests.support.runs import REPO_ROOT, compile_cache_flags, failure_report, run_harness

EXAMPLE = "examples/user_model.py:make_model"
SMALL = TrainConfig().replace(batch_size=8, image_size=32, seq_len=64, hidden_dim=32)


@pytest.mark.parametrize("name, kind", [("mlp", VlaMlp), ("transformer", VlaTransformer)])
def test_builtin_models_implement_the_interface(name, kind):
    model = build_model(SMALL.replace(model=name))

    assert isinstance(model, kind) and isinstance(model, Model)


@pytest.mark.parametrize("path", [EXAMPLE, str(REPO_ROOT / EXAMPLE)])
def test_the_user_model_example_loads_by_path_and_gives_per_sample_outputs(path):
    config = SMALL.replace(model=path)
    model = build_model(config)
    batch = MockDataset(config.data, seed=0).batch_at(0)

    out = jax.jit(model.per_sample_outputs)(model.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(1))

    assert isinstance(model, Model) and type(model).__name__ == "PooledMlpVla"
    assert isinstance(out, SampleOutputs)
    assert [np.shape(x) for x in out] == [(8,)] * 3 and np.isfinite(np.asarray(out.loss)).all()
    assert model.train_flops(8) > 0


def test_the_user_model_example_trains_in_harness_train(tmp_path):
    result = run_harness(["--config", "smoke", "--model", EXAMPLE, "--no_wandb", "--no_hard_examples",
                          "--log_interval", "1", "--checkpoint_dir", str(tmp_path / "ckpt"),
                          "--run_dir", str(tmp_path / "run"), *compile_cache_flags(tmp_path / "cache")])

    assert result.returncode == 0, failure_report(result)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # Twelve batches of 16 with 12% hard samples are too few to see the loss fall through
    # the label noise; what is checked is that every step ran and moved the parameters.
    assert [row["step"] for row in rows] == list(range(12))
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["grad_norm"]) and row["grad_norm"] > 0 for row in rows)
    assert len({row["param_norm"] for row in rows}) == 12


@pytest.mark.parametrize("name, message", [
    ("nope", "--model 'nope': not a built-in model (mlp, transformer) nor an import path"),
    ("no_such_pkg.module:make_model", "--model no_such_pkg.module:make_model: cannot import no_such_pkg.module "
                                      "(ModuleNotFoundError: No module named 'no_such_pkg')"),
    ("missing/file.py:make_model", "--model missing/file.py:make_model: cannot import missing/file.py "
                                   "(FileNotFoundError: no such file: missing/file.py)"),
    ("harness.models.mlp:no_factory", "--model harness.models.mlp:no_factory: harness.models.mlp has no "
                                      "callable 'no_factory'"),
    ("harness.models.mlp:init_params", "--model harness.models.mlp:init_params: the factory failed"),
    ("builtins:str", "--model builtins:str: the factory returned str, which lacks init(key) and per_sample_outputs"),
])
def test_bad_models_are_usage_errors_naming_the_path(name, message):
    with pytest.raises(UsageError) as caught:
        load_model(name, ModelSpec.of(SMALL.model, SMALL.data))

    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("changes, message", [
    ({"model": "resnet"}, "--model must be one of mlp, transformer or an import path"),
    ({"model": "transformer", "model_size": "70b"}, "unknown --model_size '70b' (transformer sizes: tiny, 10m,"),
    ({"param_dtype": "float16"}, "--param_dtype must be one of float32, bfloat16"),
    ({"model": "transformer", "remat": "some"}, "--remat must be one of none, full, dots"),
    ({"remat": "full"}, "--remat applies to --model transformer (or your own model), not the mlp"),
    ({"model_size": "1b"}, "--model_size applies to --model transformer"),
    ({"num_slices": 0}, "--num_slices must be positive"),
])
def test_model_settings_are_validated(changes, message):
    with pytest.raises(UsageError) as caught:
        validate(TrainConfig().replace(**changes))

    assert str(caught.value).startswith(message)


def test_user_models_get_every_setting_as_given():
    validate(TrainConfig().replace(model=EXAMPLE, model_size="whatever-it-means-to-you", remat="full"))
