"""HardExampleTracker against a brute-force top-K, on real MockDataset batches.

Run: .venv/bin/python -m pytest -q tests/test_tracker.py
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from harness.config import DataConfig
from harness.mock.data import MockDataset
from harness.hard_examples.entry import Candidate, HardExample
from harness.hard_examples.tracker import HardExampleTracker
from harness.mock.tokenizer import DIRECTIONS
from tests.support.oracles import interval_stats_oracle, top_k_oracle

BATCH = 8


@functools.cache
def dataset(num_cameras: int = 2, image_size: int = 32) -> MockDataset:
    spec = DataConfig(batch_size=BATCH, image_size=image_size, num_cameras=num_cameras, seq_len=48)
    return MockDataset(spec, seed=7)


@functools.cache
def batch_at(step: int, num_cameras: int = 2, image_size: int = 32):
    return dataset(num_cameras, image_size).batch_at(step)


# Few distinct values, so ties are common; NaN and infinities must never be admitted.
LOSSES = st.sampled_from([-1.0, 0.5, 1.0, 1.0, 4.0, 4.125, 9.0, 9.0, math.nan, math.inf, -math.inf])

UPDATE = st.tuples(
    st.integers(0, 3),  # which batch: few, so the same sample ids come back at later steps
    st.lists(LOSSES, min_size=BATCH, max_size=BATCH),
    st.lists(st.booleans(), min_size=BATCH, max_size=BATCH),  # sample_mask
    st.permutations(range(BATCH)),  # the order rows come back from the device
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 4) | st.integers(5, 12), updates=st.lists(UPDATE, min_size=1, max_size=8),
       threshold=st.sampled_from([0.75, 4.0, 4.125]))
def test_buffer_and_stats_match_brute_force(capacity, updates, threshold):
    tracker = HardExampleTracker(capacity, dataset().tokenizer, host=2, high_loss_threshold=threshold)
    observed, steps, valid_losses = [], [], []
    for step, (source, losses, mask, order) in enumerate(updates):
        batch = batch_at(source)._replace(sample_mask=np.array(mask))
        ids = batch.sample_id[list(order)]
        device_losses = np.array(losses, dtype=np.float32)  # row i belongs to ids[i]
        tracker.update(step, batch, device_losses, ids)

        steps.append(step)
        for sample_id, loss in zip(ids.tolist(), device_losses.tolist()):
            row = list(batch.sample_id).index(sample_id)
            if mask[row]:
                valid_losses.append(loss)
                if math.isfinite(loss):
                    observed.append((sample_id, loss, step))

        expected = top_k_oracle(observed, capacity)
        got = tracker.candidates()
        assert [(c.sample_id, c.loss, c.step) for c in got] == expected
        assert all(c.host == 2 for c in got)
        assert len(got) <= capacity
        stats = tracker.stats()
        want = interval_stats_oracle(steps, valid_losses, threshold)
        assert {k: getattr(stats, k) for k in want} == want
        assert stats.threshold == (expected[-1][1] if expected else None)
        assert stats.host == 2


def test_ties_at_capacity_go_to_lower_sample_ids():
    batch = batch_at(0)
    ids = batch.sample_id.tolist()
    losses = np.array([1.0, 9.0, 2.0, 9.0, 9.0, 0.0, 3.0, 9.0])
    tracker = HardExampleTracker(2, dataset().tokenizer)
    tracker.update(0, batch, losses[::-1], batch.sample_id[::-1])
    assert [c.sample_id for c in tracker.candidates()] == [ids[1], ids[3]]
    # A full buffer: an equal loss with a lower id displaces the higher id; a higher id doesn't get in.
    later = batch_at(1)._replace(sample_id=np.array([ids[0], *range(10**6, 10**6 + BATCH - 1)], dtype=np.int32))
    tracker.update(1, later, np.array([9.0] * BATCH), later.sample_id)
    assert [c.sample_id for c in tracker.candidates()] == [ids[0], ids[1]]
    assert [c.step for c in tracker.candidates()] == [1, 0]


def test_entries_hold_python_scalars():
    batch = batch_at(0)
    tracker = HardExampleTracker(3, dataset().tokenizer)
    tracker.update(np.int64(5), batch, np.arange(BATCH, dtype=np.float32), batch.sample_id)
    for c in tracker.candidates():
        assert [type(v) for v in (c.sample_id, c.loss, c.step, c.host)] == [int, float, int, int]
    stats = tracker.stats()
    for name in ("first_step", "last_step", "num_samples", "num_high_loss", "num_nonfinite"):
        assert type(getattr(stats, name)) is int, name
    for name in ("loss_sum", "loss_max", "loss_min", "threshold"):
        assert type(getattr(stats, name)) is float, name
    for example in tracker.materialize():
        assert [type(v) for v in (example.sample_id, example.loss, example.step, example.token_len)] == [
            int, float, int, int]


def test_pairs_losses_by_sample_id_not_position():
    batch = batch_at(1)
    reversed_ids = batch.sample_id[::-1]
    losses = np.zeros(BATCH, dtype=np.float32)
    losses[0] = 9.0  # belongs to the LAST row of the batch
    tracker = HardExampleTracker(1, dataset().tokenizer)
    tracker.update(1, batch, losses, reversed_ids)
    (top,) = tracker.materialize()
    assert top.sample_id == int(batch.sample_id[-1])
    row = BATCH - 1
    tokens = batch.tokenized_prompt[row]
    assert top.lang_action == dataset().tokenizer.decode(tokens[batch.tokenized_langact_mask[row]])


@pytest.mark.parametrize(
    "losses, ids, message",
    [
        (np.zeros(BATCH - 1), None, "one loss and one sample id per batch row"),
        (np.zeros(BATCH), np.arange(BATCH - 1), "one loss and one sample id per batch row"),
        (np.zeros(BATCH), np.full(BATCH, 10**6), r"sample ids \[1000000.*not in the batch"),
        (np.zeros(BATCH), "repeat", "sample ids repeat"),
        (np.zeros((BATCH, 1)), None, "one loss and one sample id per batch row"),
    ],
)
def test_update_rejects_unpairable_inputs(losses, ids, message):
    batch = batch_at(0)
    if ids is None:
        ids = batch.sample_id
    elif isinstance(ids, str):
        ids = np.concatenate([batch.sample_id[:-1], batch.sample_id[:1]])
    tracker = HardExampleTracker(4, dataset().tokenizer)
    with pytest.raises(ValueError, match=message):
        tracker.update(0, batch, losses, ids)
    assert tracker.candidates() == [] and tracker.stats().num_samples == 0


def test_update_rejects_changed_cameras():
    tracker = HardExampleTracker(4, dataset().tokenizer)
    batch = batch_at(0)
    tracker.update(0, batch, np.ones(BATCH), batch.sample_id)
    other = batch_at(1, num_cameras=3)
    with pytest.raises(ValueError, match="cameras changed"):
        tracker.update(1, other, np.ones(BATCH), other.sample_id)


@pytest.mark.parametrize("num_cameras, resize_hw", [(1, (64, 64)), (2, (24, 40)), (3, (16, 8))])
def test_materialize_thumbnails_and_text(num_cameras, resize_hw):
    batch = batch_at(2, num_cameras=num_cameras, image_size=48)
    tokenizer = dataset(num_cameras, 48).tokenizer
    losses = np.linspace(1.0, 8.0, BATCH)
    tracker = HardExampleTracker(3, tokenizer, resize_hw=resize_hw)
    tracker.update(2, batch, losses, batch.sample_id)
    examples = tracker.materialize()
    assert [e.sample_id for e in examples] == batch.sample_id[::-1][:3].tolist()

    h, w = resize_hw
    action = re.compile(rf"move ({'|'.join(DIRECTIONS)}) \d+cm( and move ({'|'.join(DIRECTIONS)}) \d+cm)*")
    for example in examples:
        row = list(batch.sample_id).index(example.sample_id)
        assert example.image.shape == (h, w * num_cameras, 3) and example.image.dtype == np.uint8
        expected = np.concatenate(
            [np.asarray(Image.fromarray(batch.images[name][row]).resize((w, h), Image.Resampling.LANCZOS))
             for name in batch.images],
            axis=1,
        )
        np.testing.assert_array_equal(example.image, expected)
        tokens = batch.tokenized_prompt[row]
        assert example.lang_action == tokenizer.decode(tokens[batch.tokenized_langact_mask[row]])
        assert action.fullmatch(example.lang_action), example.lang_action
        assert example.token_len == int(batch.tokenized_langact_mask[row].sum()) > 0
        assert example.token_len == len(tokenizer.split_words(example.lang_action))
        assert tokenizer.decode(tokens) == f"{example.prompt} {example.lang_action}"
        assert "move" not in example.prompt.split()
        assert (example.loss, example.step, example.host) == (float(losses[row]), 2, 0)


def test_materialize_subset_keeps_buffer_order_and_rejects_unknown_ids():
    batch = batch_at(0)
    tracker = HardExampleTracker(5, dataset().tokenizer)
    tracker.update(0, batch, np.arange(BATCH, dtype=np.float32), batch.sample_id)
    ids = [c.sample_id for c in tracker.candidates()]
    assert [e.sample_id for e in tracker.materialize({ids[3], ids[0]})] == [ids[0], ids[3]]
    assert tracker.materialize([]) == []
    with pytest.raises(ValueError, match="not in host 0's buffer"):
        tracker.materialize([ids[0], 10**9])


def test_buffer_owns_copies_of_the_rows():
    """The loop may reuse batch buffers; what the tracker holds must not change."""
    step_batch = batch_at(3)
    batch = step_batch._replace(
        images={name: images.copy() for name, images in step_batch.images.items()},
        tokenized_prompt=step_batch.tokenized_prompt.copy(),
    )
    tracker = HardExampleTracker(2, dataset().tokenizer)
    tracker.update(3, batch, np.arange(BATCH, dtype=np.float32), batch.sample_id)
    before = tracker.materialize()
    for images in batch.images.values():
        images[:] = 0
    batch.tokenized_prompt[:] = 0
    assert tracker.materialize() == before


def test_update_is_lazy(monkeypatch):
    """update() copies rows; only materialize() resizes images and decodes tokens."""
    calls = {"resize": 0, "decode": 0}
    real_resize, tokenizer = Image.Image.resize, dataset().tokenizer

    def counting_resize(self, *args, **kwargs):
        calls["resize"] += 1
        return real_resize(self, *args, **kwargs)

    def counting_decode(tokens):
        calls["decode"] += 1
        return type(tokenizer).decode(tokenizer, tokens)

    monkeypatch.setattr(Image.Image, "resize", counting_resize)
    monkeypatch.setattr(tokenizer, "decode", counting_decode)
    tracker = HardExampleTracker(4, tokenizer)
    rng = np.random.default_rng(0)
    for step in range(4):
        batch = batch_at(step)
        tracker.update(step, batch, rng.random(BATCH) * 10, batch.sample_id)
    assert calls == {"resize": 0, "decode": 0}
    examples = tracker.materialize()
    assert calls == {"resize": 4 * 2, "decode": 4 * 2}
    assert len(examples) == 4


def test_reset_empties_buffer_and_stats():
    batch = batch_at(0)
    tracker = HardExampleTracker(3, dataset().tokenizer, host=1)
    tracker.update(0, batch, np.full(BATCH, 5.0), batch.sample_id)
    tracker.reset()
    assert tracker.candidates() == [] and tracker.materialize() == []
    stats = tracker.stats()
    assert (stats.host, stats.first_step, stats.num_samples, stats.loss_sum, stats.loss_max, stats.threshold) == (
        1, None, 0, 0.0, None, None)
    tracker.update(4, batch, np.full(BATCH, 1.0), batch.sample_id)
    assert tracker.stats().first_step == 4 and tracker.stats().loss_max == 1.0


def test_every_knob_shows():
    batch = batch_at(0)
    losses = np.arange(BATCH, dtype=np.float32)  # 0..7

    def run(**kwargs):
        tracker = HardExampleTracker(**{"max_hard_examples": 3, "tokenizer": dataset().tokenizer, **kwargs})
        tracker.update(0, batch, losses, batch.sample_id)
        return tracker

    assert len(run(max_hard_examples=2).candidates()) == 2
    assert len(run(max_hard_examples=5).candidates()) == 5
    assert {c.host for c in run(host=6).candidates()} == {6} == {e.host for e in run(host=6).materialize()}
    assert run(resize_hw=(10, 20)).materialize()[0].image.shape == (10, 40, 3)
    assert run(high_loss_threshold=4.0).stats().num_high_loss == 3
    assert run(high_loss_threshold=5.5).stats().num_high_loss == 2

    class ShoutingTokenizer(type(dataset().tokenizer)):
        def decode(self, tokens):
            return super().decode(tokens).upper()

    example = run(tokenizer=ShoutingTokenizer(vocab_size=256, max_tokens=48)).materialize()[0]
    assert example.lang_action.startswith("MOVE ")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_hard_examples": 0}, "max_hard_examples"), ({"host": -1}, "host"),
     ({"resize_hw": (0, 4)}, "resize_hw"), ({"high_loss_threshold": math.nan}, "high_loss_threshold")],
)
def test_constructor_rejects_bad_knobs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HardExampleTracker(**{"max_hard_examples": 3, "tokenizer": dataset().tokenizer, **kwargs})


def test_update_cost_for_a_256_batch():
    """Prints the per-step cost; no timing assertion (CI machines vary)."""
    ds = MockDataset(DataConfig(batch_size=256, image_size=64), seed=1)
    batches = [ds.batch_at(step) for step in range(6)]
    rng = np.random.default_rng(0)
    tracker = HardExampleTracker(50, ds.tokenizer)
    times = []
    for step, batch in enumerate(batches * 5):
        losses = rng.gamma(2.0, 1.0, batch.size).astype(np.float32)
        order = rng.permutation(batch.size)
        start = time.perf_counter()
        tracker.update(step, batch, losses, batch.sample_id[order])
        times.append(time.perf_counter() - start)
    print(f"\nupdate(256 rows, K=50): first {times[0] * 1e3:.2f} ms (copies 50 rows), "
          f"median {np.median(times) * 1e3:.3f} ms")
    assert len(tracker.candidates()) == 50


def test_hard_example_equality_compares_images():
    image = np.zeros((2, 4, 3), dtype=np.uint8)
    example = HardExample(1, 2.0, 3, 0, "move up 1cm", "pick up the cup", 4, image)
    assert example == dataclasses.replace(example, image=image.copy())
    assert example != dataclasses.replace(example, image=image + 1)
    assert example != dataclasses.replace(example, loss=2.5)
    assert Candidate(1, 2.0, 3, 0) == Candidate(1, 2.0, 3, 0)
