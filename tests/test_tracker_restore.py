"""Tracker state through a checkpoint: exact round trip, and untrusted saved state."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from harness.config import DataConfig
from harness.mock.data import MockDataset
from harness.hard_examples.reporter import HardExampleReporter
from harness.hard_examples.tracker import HardExampleTracker


def _tracker_after(steps: range, dataset: MockDataset) -> HardExampleTracker:
    tracker = HardExampleTracker(5, dataset.tokenizer, resize_hw=(8, 8))
    rng = np.random.default_rng(7)
    for step in steps:
        batch = dataset.batch_at(step)
        tracker.update(step, batch, rng.gamma(2.0, 1.0, batch.size), batch.sample_id)
    return tracker


@pytest.fixture
def dataset() -> MockDataset:
    return MockDataset(DataConfig(batch_size=8, image_size=16), seed=3)


def test_restore_rebuilds_buffer_stats_and_pixels(dataset):
    original = _tracker_after(range(6), dataset)
    restored = HardExampleTracker(5, dataset.tokenizer, resize_hw=(8, 8))
    restored.restore(original.stats(), original.candidates(), dataset.records)
    assert restored.candidates() == original.candidates()
    assert restored.stats() == original.stats()
    assert restored.materialize() == original.materialize()
    # And it keeps going exactly like the original.
    batch = dataset.batch_at(6)
    losses = np.linspace(0.0, 9.0, batch.size)
    for tracker in (original, restored):
        tracker.update(6, batch, losses, batch.sample_id)
    assert restored.candidates() == original.candidates() and restored.stats() == original.stats()


def test_restore_refuses_a_reader_that_returns_other_records(dataset):
    original = _tracker_after(range(3), dataset)

    def wrong_records(keys):
        return dataset.records(keys + 1)

    with pytest.raises(ValueError, match="is not among the records read back"):
        HardExampleTracker(5, dataset.tokenizer).restore(original.stats(), original.candidates(), wrong_records)


def _reporter(tracker: HardExampleTracker, tmp_path) -> HardExampleReporter:
    return HardExampleReporter(tracker, interval=100, k=5, total_steps=1000)


def test_reporter_state_round_trip_single_process(dataset, tmp_path):
    original = _tracker_after(range(4), dataset)
    saved = _reporter(original, tmp_path).checkpoint_state(step=4)
    fresh = HardExampleTracker(5, dataset.tokenizer, resize_hw=(8, 8))
    assert _reporter(fresh, tmp_path).restore_state(saved, step=4, read_records=dataset.records) is None
    assert fresh.candidates() == original.candidates() and fresh.stats() == original.stats()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: {**s, "version": 1}, "Invalid enum value 1 - at `$.version`"),  # a harness before messages.py
        (lambda s: [s], "Expected `object`, got `array`"),
        (lambda s: {**s, "payloads": [3]}, "Expected `str | null`, got `int` - at `$.payloads[0]`"),
        (lambda s: {**s, "payloads": [None]}, "hard-example state of host 0: missing"),
        (lambda s: {**s, "payloads": s["payloads"] * 2}, "saved for 2 hosts, running on 1"),
        (lambda s: {**s, "payloads": ["!!not base64!!"]}, ""),
        (lambda s: {**s, "payloads": [base64.b64encode(b"\x93garbage").decode()]}, "hard-example state of host 0"),
        (lambda s: {**s, "payloads": [s["payloads"][0][:-8]]}, ""),
    ],
)
def test_damaged_saved_state_gives_a_warning_and_an_empty_tracker(dataset, tmp_path, damage, message):
    saved = _reporter(_tracker_after(range(4), dataset), tmp_path).checkpoint_state(step=4)
    fresh = HardExampleTracker(5, dataset.tokenizer, resize_hw=(8, 8))
    warning = _reporter(fresh, tmp_path).restore_state(damage(saved), step=4, read_records=dataset.records)
    assert warning is not None and message in warning and "starts empty" in warning
    assert fresh.candidates() == [] and fresh.stats().num_samples == 0


def test_state_saved_at_another_step_is_refused(dataset, tmp_path):
    saved = _reporter(_tracker_after(range(4), dataset), tmp_path).checkpoint_state(step=4)
    fresh = HardExampleTracker(5, dataset.tokenizer)
    warning = _reporter(fresh, tmp_path).restore_state(saved, step=5, read_records=dataset.records)
    assert warning is not None and "claims host 0 step 4" in warning


def test_gather_survives_a_merge_error_with_collectives_in_step(dataset, monkeypatch):
    """A merge error (e.g. two hosts claiming one sample id) is the same on every host:
    the interval logs nothing, but both phases' collectives still run, in order."""
    from harness.hard_examples import gather as gather_module

    def refuse(per_host, k):
        raise ValueError("sample id 3 listed by hosts 0 and 1")

    monkeypatch.setattr(gather_module, "merge_round_robin", refuse)
    calls = []

    def one_host_allgather(row: np.ndarray) -> np.ndarray:
        calls.append(row.dtype)
        return row[None]

    result = gather_module.gather_hard_examples(_tracker_after(range(2), dataset), step=2, k=5,
                                                allgather=one_host_allgather)
    assert result.examples == []
    assert result.bad_hosts == {-1: "merge refused this interval's candidates: sample id 3 listed by hosts 0 and 1"}
    assert calls == [np.uint8, np.uint8]  # one first round per phase: both payloads fit in it
