"""Checkpoints and resume through the real CLI: a resumed run continues bit for bit.

Every run here is the smoke preset logging every step, so `metrics.jsonl` holds each
step's full-precision loss, grad norm, ... and two runs can be compared exactly.

    .venv/bin/python -m pytest -q tests/test_resume.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from harness.runtime.checkpoint import existing_steps
from harness.outputs.sinks import read_metrics
from tests.support.argv import train_args
from tests.support.runs import REPO_ROOT, copy_run, harness_env, run_harness, sigkill_when, start_harness, tree_snapshot

STEPS = 60
RUN_TIMEOUT_S = 180


_args = partial(train_args, log_interval=1, no_hard_examples=True)


def _metrics_text(root: Path) -> str:
    return (root / "run" / "metrics.jsonl").read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """An uninterrupted 60-step run (checkpoints at 20, 40, 60)."""
    root = tmp_path_factory.mktemp("reference")
    result = run_harness(_args(root, cache, "--num_train_steps", str(STEPS), "--save_interval", "20"),
                         timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_metrics(root / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(STEPS))
    assert existing_steps(str(root / "ckpt")) == [20, 40, 60]
    return root


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, cache) -> tuple[Path, str, str]:
    """40 steps with --resume into an empty checkpoint dir, then --resume up to 60."""
    root = tmp_path_factory.mktemp("split")
    (root / "ckpt").mkdir()
    first = run_harness(_args(root, cache, "--num_train_steps", "40", "--save_interval", "20", "--resume"),
                        timeout=RUN_TIMEOUT_S)
    assert first.returncode == 0, first.stdout + first.stderr
    first_rows = [row["step"] for row in read_metrics(root / "run" / "metrics.jsonl")]
    assert first_rows == list(range(40))
    second = run_harness(_args(root, cache, "--num_train_steps", str(STEPS), "--save_interval", "20", "--resume"),
                         timeout=RUN_TIMEOUT_S)
    assert second.returncode == 0, second.stdout + second.stderr
    return root, first.stdout, second.stdout


def test_resume_with_an_empty_checkpoint_dir_starts_from_step_0(split_run):
    _, first_stdout, _ = split_run

    assert "starting at step 0" in first_stdout
    assert "Resumed from checkpoint" not in first_stdout


def test_resumed_run_continues_bit_for_bit(reference, split_run):
    root, _, second_stdout = split_run
    expected = read_metrics(reference / "run" / "metrics.jsonl")

    rows = read_metrics(root / "run" / "metrics.jsonl")

    assert "Resumed from checkpoint at step 40" in second_stdout.splitlines()
    # Parsed JSON floats compared with ==: exact, not approximately.
    assert rows[40:] == expected[40:]
    assert [row["step"] for row in rows[40:]] == list(range(40, STEPS))
    assert _metrics_text(root) == _metrics_text(reference)
    assert existing_steps(str(root / "ckpt")) == [20, 40, 60]


def _logged_steps(path: Path) -> list[int]:
    """Steps in a metrics.jsonl that another process is appending to (skips a torn line)."""
    steps = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return steps


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_metrics(reference, tmp_path, cache):
    args = _args(tmp_path, cache, "--num_train_steps", str(STEPS), "--save_interval", "10")
    metrics_path, ckpt = tmp_path / "run" / "metrics.jsonl", str(tmp_path / "ckpt")
    killed = start_harness(args, log_path=tmp_path / "killed.log")

    def past_first_checkpoint() -> bool:  # a step after the first committed checkpoint is logged
        committed = existing_steps(ckpt)
        return bool(committed) and max(_logged_steps(metrics_path), default=-1) >= committed[0]

    sigkill_when(killed, past_first_checkpoint, log_path=tmp_path / "killed.log", timeout=RUN_TIMEOUT_S)
    assert max(_logged_steps(metrics_path)) < STEPS - 1  # really killed mid-run

    result = run_harness([*args, "--resume"], timeout=RUN_TIMEOUT_S)

    assert result.returncode == 0, result.stdout + result.stderr
    resumed_at = re.search(r"^Resumed from checkpoint at step (\d+)", result.stdout, re.MULTILINE)
    assert resumed_at and int(resumed_at.group(1)) % 10 == 0 and 10 <= int(resumed_at.group(1)) < STEPS
    # No duplicated steps, no torn lines, no gaps: the uninterrupted run's file exactly.
    assert _metrics_text(tmp_path) == _metrics_text(reference)


def test_resume_with_another_batch_size_fails_and_changes_nothing(reference, tmp_path, cache):
    root = copy_run(reference, tmp_path)
    before = tree_snapshot(root)

    result = run_harness(_args(root, cache, "--num_train_steps", str(STEPS), "--resume", "--batch_size", "32"),
                         timeout=RUN_TIMEOUT_S)

    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("harness-train: error: cannot resume from ")
    assert "batch_size: checkpoint 16 vs now 32" in result.stderr
    assert tree_snapshot(root) == before


def test_checkpoints_without_resume_or_overwrite_fail_then_overwrite_starts_over(reference, tmp_path, cache):
    root = copy_run(reference, tmp_path)
    before = tree_snapshot(root)

    refused = run_harness(_args(root, cache, "--num_train_steps", "8"), timeout=RUN_TIMEOUT_S)

    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.splitlines() == [
        f"harness-train: error: {root / 'ckpt'} already holds checkpoints (latest step 60): "
        "pass --resume to continue or --overwrite to start over"
    ]
    assert tree_snapshot(root) == before

    overwritten = run_harness(_args(root, cache, "--num_train_steps", "8", "--overwrite"), timeout=RUN_TIMEOUT_S)

    assert overwritten.returncode == 0, overwritten.stdout + overwritten.stderr
    assert "Resumed" not in overwritten.stdout
    assert sorted(os.listdir(root / "ckpt")) == ["6", "8"]  # 20, 40, 60 are gone
    assert _metrics_text(root).splitlines() == _metrics_text(reference).splitlines()[:8]


# The CLI, dying like `kill -9` (no cleanup, no flush) as soon as the save of step
# DIE_AFTER_SAVE returns. Importing harness.runtime.checkpoint (and so jax) first is what
# `python -m harness.train` does too.
DYING_CLI = """
import os, sys
from harness.runtime.checkpoint import CheckpointStore

save = CheckpointStore.save

def save_then_die(self, step, state, meta):
    save(self, step, state, meta)
    if step == int(os.environ["DIE_AFTER_SAVE"]):
        os._exit(137)

CheckpointStore.save = save_then_die
from harness.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_death_right_after_a_checkpoint_loses_no_metric_rows(reference, tmp_path, cache):
    """The process dies the moment checkpoint 4 is committed (synchronous save). Step 3
    may still have been in flight when the save began; its metrics row must be on disk
    by then anyway, because the resume starts at 4."""
    args = _args(tmp_path, cache, "--num_train_steps", "8", "--save_interval", "4", "--sync_checkpointing")

    died = subprocess.run([sys.executable, "-c", DYING_CLI, *args], cwd=REPO_ROOT,
                          env=harness_env(DIE_AFTER_SAVE="4"), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert died.returncode == 137, died.stdout + died.stderr
    assert existing_steps(str(tmp_path / "ckpt")) == [4]

    resumed = run_harness([*args, "--resume"], timeout=RUN_TIMEOUT_S)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resumed from checkpoint at step 4" in resumed.stdout.splitlines()
    assert [row["step"] for row in read_metrics(tmp_path / "run" / "metrics.jsonl")] == list(range(8))
    assert _metrics_text(tmp_path).splitlines() == _metrics_text(reference).splitlines()[:8]
