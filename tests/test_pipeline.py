"""The input pipeline (harness/train/pipeline.py): which keys each host reads, its
checkpointable iterator state, and exact resume through that state.

    .venv/bin/python -m pytest -q tests/test_pipeline.py
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from harness.config import DataConfig
from harness.mock.data import MockDataset
from harness.outputs.sinks import read_metrics
from harness.runtime.checkpoint import existing_steps
from harness.train.pipeline import InputPipeline, PipelineStateError
from tests.support.argv import train_args
from tests.support.runs import failure_report, run_harness, sigkill_when, start_harness

SPEC = DataConfig(batch_size=12, image_size=8, seq_len=32)
RUN_TIMEOUT_S = 240


BATCHES = (2**31 - 1) // 12  # every key an int32 sample id can hold, in batches of 12


def _pipeline(host: int = 0, hosts: int = 1) -> InputPipeline:
    return InputPipeline(MockDataset(SPEC, seed=5, process_index=host, process_count=hosts))


@pytest.mark.parametrize("hosts", [1, 2, 3])
def test_each_step_takes_the_next_global_batch_of_keys_host_i_the_ith_block(hosts):
    per_host = SPEC.batch_size // hosts
    for host in range(hosts):
        pipeline = _pipeline(host, hosts)
        ids = [next(pipeline).sample_id.tolist() for _ in range(4)]
        expected = [[step * 12 + host * per_host + row for row in range(per_host)] for step in range(4)]
        assert ids == expected


def test_a_sample_reads_the_same_whatever_batch_it_is_read_in():
    dataset = MockDataset(SPEC, seed=5)
    batch = next(_pipeline())
    alone = dataset.records(np.asarray([7]))
    assert alone.sample_id.tolist() == [7]
    for name, image in batch.images.items():
        np.testing.assert_array_equal(alone.images[name][0], image[7])
    np.testing.assert_array_equal(alone.actions[0], batch.actions[7])
    np.testing.assert_array_equal(alone.tokenized_prompt[0], batch.tokenized_prompt[7])


def test_a_restored_state_continues_with_the_same_batches():
    original = _pipeline()
    for _ in range(3):
        next(original)
    state = original.state()
    expected = [next(original).sample_id.tolist() for _ in range(2)]

    restored = _pipeline()
    restored.restore(json.loads(json.dumps(state)))  # as it comes back from a checkpoint

    assert [next(restored).sample_id.tolist() for _ in range(2)] == expected


@pytest.mark.parametrize("state, problem", [
    ([1], "not an input pipeline state: [1]"),
    ({"next_index": "3"}, f"is not a position in this pipeline's {BATCHES} batches"),
    ({"next_index": BATCHES + 1}, f"is not a position in this pipeline's {BATCHES} batches"),
    ({"next_index": -1}, f"is not a position in this pipeline's {BATCHES} batches"),
    ({"next_index": 3, "extra": 1}, f"is not a position in this pipeline's {BATCHES} batches"),
    ({"next_index": 1, "pad": "x" * 70_000}, "not an input pipeline state"),
])
def test_a_damaged_state_is_refused(state, problem):
    with pytest.raises(PipelineStateError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        _pipeline().restore(state)


# --- Through the real CLI.


_args = partial(train_args, log_interval=1, num_train_steps=24, save_interval=4, hard_example_log_interval=6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    root = tmp_path_factory.mktemp("reference")
    result = run_harness(_args(root, cache, "--record_per_sample_losses"), timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, failure_report(result)
    return root


def _hard_example_files(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((root / "run" / "hard_examples").glob("step_*.json"))}


def test_a_run_killed_mid_interval_resumes_with_identical_metrics_and_hard_examples(reference, tmp_path, cache):
    args = _args(tmp_path, cache)
    killed = start_harness(args, log_path=tmp_path / "killed.log")
    # Killed once a checkpoint inside a hard-example interval (4, 8, 16, 20: not 12 or 24) is committed.
    sigkill_when(killed, lambda: bool(set(existing_steps(str(tmp_path / "ckpt"))) & {4, 8, 16, 20}),
                 log_path=tmp_path / "killed.log", timeout=RUN_TIMEOUT_S)

    result = run_harness([*args, "--resume"], timeout=RUN_TIMEOUT_S)

    assert result.returncode == 0, failure_report(result)
    assert "Resumed from checkpoint at step" in result.stdout
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (reference / "run" / "metrics.jsonl").read_text()
    assert _hard_example_files(tmp_path) == _hard_example_files(reference)
    assert list(_hard_example_files(reference)) == ["step_12.json", "step_18.json", "step_24.json", "step_6.json"]


def test_resume_reads_on_from_the_saved_pipeline_state_not_from_the_step(reference, tmp_path, cache):
    """Moving the saved position one batch on moves the data one batch on: the resumed
    step 8 reads the keys of step 9."""
    first = run_harness(_args(tmp_path, cache, "--num_train_steps", "8", "--record_per_sample_losses"),
                        timeout=RUN_TIMEOUT_S)
    assert first.returncode == 0, failure_report(first)
    meta_path = tmp_path / "ckpt" / "8" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    assert meta["data"] == [{"next_index": 8}]
    meta["data"] = [{"next_index": 9}]
    meta_path.write_text(json.dumps(meta))

    resumed = run_harness(_args(tmp_path, cache, "--num_train_steps", "10", "--resume",
                                "--record_per_sample_losses"), timeout=RUN_TIMEOUT_S)

    assert resumed.returncode == 0, failure_report(resumed)
    rows = [json.loads(line) for line in (tmp_path / "run" / "per_sample_losses.jsonl").read_text().splitlines()]
    reference_rows = [json.loads(line) for line in
                      (reference / "run" / "per_sample_losses.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(10))
    assert rows[8]["sample_id"] == reference_rows[9]["sample_id"]
    assert rows[7]["sample_id"] == reference_rows[7]["sample_id"]
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[:8] == read_metrics(reference / "run" / "metrics.jsonl")[:8]
