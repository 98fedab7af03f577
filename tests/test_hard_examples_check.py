"""`python -m harness.hard_examples.check`: passes on one process and on two under the
launcher, and its checks can fail (a swapped image or an altered loss is caught).

    .venv/bin/python -m pytest -q tests/test_hard_examples_check.py
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from harness.config import DataConfig
from harness.mock.data import MockDataset
from harness.hard_examples.gather import GatherResult, gather_hard_examples
from harness.hard_examples.tracker import HardExampleTracker
from harness.hard_examples.check import Checks, LossModel, check_interval
from tests.support.runs import REPO_ROOT, failure_report, harness_env, host_lines, launch_local

CHECK_ARGS = ["--steps", "12", "--batch_size", "16", "--buffer_size", "8", "--log_interval", "6"]
TIMEOUT_S = 180
IMAGE_CHECK = "every entry's image is its own sample's image"
LOSS_CHECK = "every entry's loss is its own sample's loss"
ORACLE_CHECK = "merged entries equal the brute-force oracle over all hosts"


def assert_passed(lines: list[str]) -> None:
    assert "✅ TEST PASSED" in lines
    assert f"✓ {IMAGE_CHECK}" in lines
    assert f"✓ {LOSS_CHECK}" in lines
    assert f"✓ {ORACLE_CHECK}" in lines
    assert not [line for line in lines if line.startswith("✗")]
    assert sum(line.startswith("HARD EXAMPLES AT STEP") for line in lines) == 2  # steps 6 and 12


def test_passes_on_one_process():
    result = subprocess.run([sys.executable, "-m", "harness.hard_examples.check", *CHECK_ARGS],
                            cwd=REPO_ROOT, env=harness_env(), capture_output=True, text=True, timeout=TIMEOUT_S)

    assert result.returncode == 0, failure_report(result)
    assert_passed(result.stdout.splitlines())
    assert "  Process count: 1" in result.stdout.splitlines()


def test_passes_on_two_processes_under_the_launcher():
    result = launch_local(2, 1, [sys.executable, "-m", "harness.hard_examples.check", *CHECK_ARGS],
                          timeout=TIMEOUT_S)

    assert result.returncode == 0, failure_report(result)
    lines = host_lines(result.stdout, 0)
    assert_passed(lines)
    assert "  Process count: 2" in lines
    # Process 0 reports for everyone; host 1 only prints its own statistics.
    assert not [line for line in host_lines(result.stdout, 1) if "PASSED" in line or line.startswith("✓")]


# In-process: the check function itself must catch a wrong pairing, or a passing run
# proves nothing. Small sizes; the gather runs on one process with a trivial allgather.

@pytest.fixture(scope="module")
def checked_interval():
    args = argparse.Namespace(buffer_size=4, thumbnail_size=8, seed=0)
    spec = DataConfig(batch_size=8, image_size=16, seq_len=64)
    dataset = MockDataset(spec, args.seed)
    model = LossModel(spec, args.seed)
    tracker = HardExampleTracker(args.buffer_size, dataset.tokenizer, resize_hw=(8, 8))
    seen = []
    for step in range(2):
        batch = dataset.batch_at(step)
        losses = model(batch)
        tracker.update(step, batch, losses, batch.sample_id)
        seen += list(zip(batch.sample_id.tolist(), losses.tolist()))
    result = gather_hard_examples(tracker, step=2, k=args.buffer_size, allgather=lambda row: row[None])
    return result, [seen], args, spec, model


def run_checks(checked_interval, result: GatherResult) -> Checks:
    _, everyone, args, spec, model = checked_interval
    checks = Checks()
    check_interval(checks, result, everyone, args, spec, model)
    return checks


def test_the_untouched_interval_passes_every_check(checked_interval):
    result = checked_interval[0]
    checks = run_checks(checked_interval, result)

    assert len(result.examples) == 4
    assert checks.failures == {}
    assert {IMAGE_CHECK, LOSS_CHECK, ORACLE_CHECK} <= set(checks.names)


def test_swapped_images_fail_the_image_check(checked_interval):
    result = checked_interval[0]
    first, second, *rest = result.examples
    assert not np.array_equal(first.image, second.image)
    swapped = [dataclasses.replace(first, image=second.image), dataclasses.replace(second, image=first.image), *rest]

    checks = run_checks(checked_interval, dataclasses.replace(result, examples=swapped))

    assert set(checks.failures) == {IMAGE_CHECK}
    assert f"sample {first.sample_id}" in checks.failures[IMAGE_CHECK]


def test_swapped_losses_fail_the_loss_and_oracle_checks(checked_interval):
    result = checked_interval[0]
    first, second, *rest = result.examples
    assert first.loss != second.loss
    swapped = [dataclasses.replace(first, loss=second.loss), dataclasses.replace(second, loss=first.loss), *rest]

    checks = run_checks(checked_interval, dataclasses.replace(result, examples=swapped))

    assert set(checks.failures) == {LOSS_CHECK, ORACLE_CHECK}
    assert f"sample {first.sample_id}" in checks.failures[LOSS_CHECK]
