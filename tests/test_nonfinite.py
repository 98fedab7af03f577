"""The non-finite policy: a nan/inf loss, gradient or parameter stops the run with one
line naming the step (`--on_nonfinite error`, the default) and never saves that state or
prunes a good checkpoint for it; `--on_nonfinite skip` drops such updates and goes on.
Faults come from the documented testing option `--testing_nonfinite_step`.

    .venv/bin/python -m pytest -q tests/test_nonfinite.py
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np
import pytest

from harness.errors import NonFiniteStateError
from harness.outputs.sinks import read_metrics
from harness.runtime.checkpoint import CheckpointStore, existing_steps
from tests.support.argv import train_args
from tests.support.runs import failure_report, run_harness, tree_snapshot

RUN_TIMEOUT_S = 240


_args = partial(train_args, log_interval=1, num_train_steps=12, save_interval=3, keep=2)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, cache):
    """Step 10 goes nan after checkpoints 3, 6, 9 (keep 2: 3 was pruned by the save of 9)."""
    root = tmp_path_factory.mktemp("stopped")
    result = run_harness(_args(root, cache, "--testing_nonfinite_step", "10"), timeout=RUN_TIMEOUT_S)
    return root, result


def test_a_nan_step_stops_the_run_with_one_line_naming_it(stopped):
    _, result = stopped

    assert result.returncode == 1, failure_report(result)
    assert result.stderr.splitlines() == [
        "harness-train: error: step 10: non-finite loss=nan, grad_norm=nan, param_norm=nan; stopped without "
        "saving this state (checkpoints written by this run: 3, 6, 9; none was pruned for it). "
        "--on_nonfinite skip drops such updates instead"
    ], failure_report(result)


def test_a_nan_step_saves_nothing_and_prunes_no_good_checkpoint(stopped, tmp_path, cache):
    root, _ = stopped
    assert existing_steps(str(root / "ckpt")) == [6, 9]
    step_9 = tree_snapshot(root / "ckpt" / "9")

    # The kept checkpoint is good: a resume that skips the poisoned step finishes.
    resumed = run_harness(_args(root, cache, "--resume", "--testing_nonfinite_step", "10",
                                "--on_nonfinite", "skip"), timeout=RUN_TIMEOUT_S)

    assert resumed.returncode == 0, failure_report(resumed)
    assert "Resumed from checkpoint at step 9" in resumed.stdout.splitlines()
    assert tree_snapshot(root / "ckpt" / "9") == step_9


def test_skip_drops_the_update_and_the_run_goes_on(tmp_path, cache):
    result = run_harness(_args(tmp_path, cache, "--testing_nonfinite_step", "7", "--on_nonfinite", "skip"),
                         timeout=RUN_TIMEOUT_S)

    assert result.returncode == 0, failure_report(result)
    assert ("WARNING: step 7: non-finite loss=nan, grad_norm=nan; update skipped "
            "(--on_nonfinite skip; 1 skipped so far)") in result.stdout.splitlines()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(12))
    assert rows[7]["loss"] == "nan" and rows[7]["grad_norm"] == "nan"
    # The parameters after step 7 are those after step 6, bit for bit.
    assert rows[7]["param_norm"] == rows[6]["param_norm"]
    assert all(np.isfinite(row["loss"]) for i, row in enumerate(rows) if i != 7)
    assert existing_steps(str(tmp_path / "ckpt")) == [9, 12]


@pytest.mark.parametrize("flag, value", [("--learning_rate", "nan"), ("--weight_decay", "inf"),
                                         ("--learning_rate", "-1")])
def test_non_finite_or_negative_settings_are_usage_errors(flag, value, tmp_path, cache):
    result = run_harness(_args(tmp_path, cache, flag, value), timeout=RUN_TIMEOUT_S)

    assert result.returncode == 2, failure_report(result)
    expected = (f"harness-train: error: {flag} must be a finite number, got {value}"
                if value in ("nan", "inf") else f"harness-train: error: {flag} must be >= 0, got -1.0")
    assert result.stderr.splitlines() == [expected]
    assert not tmp_path.joinpath("run").exists() and not tmp_path.joinpath("ckpt").exists()


def test_the_store_refuses_to_save_a_non_finite_state(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"), keep=1, async_save=False)
    try:
        store.save(1, {"w": jnp.ones((4,))}, {"step": 1})
        with pytest.raises(NonFiniteStateError, match=r"not saving step 2: non-finite values in \['w'\]"):
            store.save(2, {"w": jnp.asarray([1.0, jnp.inf, 0.0, 0.0])}, {"step": 2})
    finally:
        store.close()
    assert existing_steps(str(tmp_path / "ckpt")) == [1]
