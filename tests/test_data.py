"""Mock tokenizer and mock data: determinism, layout, uniqueness, hard-sample rate.

    .venv/bin/python -m pytest -q tests/test_data.py
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from harness.config import DataConfig
from harness.mock.data import ACTION_DIM, CAMERA_NAMES, STATE_DIM, Batch, MockDataset
from harness.mock.tokenizer import BOS, EOS, PAD, SEP, SPECIAL_TOKENS, MockTokenizer
from tests.support.oracles import hard_by_label_noise
from tests.support.runs import REPO_ROOT

TEXTS = (
    "pick up the red cup and put it in the sink slowly",
    "Move RIGHT 10cm and move forward 5cm",
    "the zebra juggles quantum teacups near the far corner",
)
LANGACT = re.compile(r"move (right|left|forward|backward|up|down) (\d+)cm( and move (right|left|forward|backward|up|down) (\d+)cm){0,2}")
VOCAB_WORDS = [w for w in MockTokenizer().words if w not in SPECIAL_TOKENS]


def _batch_bytes(batch: Batch) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every array of a batch, by field, as (dtype, shape, raw bytes)."""
    flat = {f"images/{k}": v for k, v in batch.images.items()}
    flat |= {name: getattr(batch, name) for name in Batch._fields if name != "images"}
    return {k: (str(v.dtype), v.shape, v.tobytes()) for k, v in flat.items()}


# Tokenizer.

def test_encoding_is_the_same_in_another_process():
    """blake2b, not Python's salted hash: a fresh interpreter (new hash seed) agrees."""
    code = (
        "import sys; from harness.mock.tokenizer import MockTokenizer; t = MockTokenizer()\n"
        "for line in sys.stdin.read().splitlines(): print(t.encode(line).tolist())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], input="\n".join(TEXTS), cwd=REPO_ROOT,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=True,
    )
    tokenizer = MockTokenizer()

    assert other.stdout.splitlines() == [str(tokenizer.encode(t).tolist()) for t in TEXTS]


def test_out_of_vocabulary_words_hash_into_the_bucket_range():
    tokenizer = MockTokenizer(vocab_size=256)
    ids = tokenizer.encode_words("zebra juggles quantum teacups")

    assert ((ids >= len(tokenizer.words)) & (ids < 256)).all()
    assert tokenizer.decode(ids) == " ".join(f"<w{i}>" for i in ids.tolist())


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=400))
def test_every_encoding_holds_10_to_60_tokens_framed_by_bos_and_eos(text):
    tokens = MockTokenizer().encode(text)
    words = MockTokenizer().split_words(text)

    assert tokens.dtype == np.int32
    assert 10 <= len(tokens) <= 60
    assert tokens[0] == BOS
    assert len(tokens) == max(10, min(len(words) + 2, 60))
    assert tokens[min(len(words) + 1, 59)] == EOS
    assert (tokens[len(words) + 2:] == PAD).all()


def test_short_and_long_texts_hit_the_bounds_exactly():
    tokenizer = MockTokenizer()

    assert tokenizer.encode("hi").tolist() == [BOS, tokenizer.word_id("hi"), EOS] + [PAD] * 7
    long = tokenizer.encode("move " * 200)
    assert len(long) == 60 and long[-1] == EOS and (long[1:-1] == tokenizer.word_id("move")).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(VOCAB_WORDS), min_size=1, max_size=50),
       st.lists(st.sampled_from([" ", "  ", "\t"]), min_size=50, max_size=50),
       st.booleans())
def test_decode_gives_back_the_normalized_in_vocabulary_text(words, gaps, shout):
    text = "".join(w + g for w, g in zip(words, gaps))
    if shout:
        text = text.upper()
    normalized = re.sub(r"\b(\d+) (cm|deg)\b", r"\1\2", " ".join(words))

    tokenizer = MockTokenizer()

    assert tokenizer.decode(tokenizer.encode(text)) == normalized


def test_decode_joins_units_to_their_numbers():
    tokenizer = MockTokenizer()
    text = "move right 10cm and move forward 5cm and rotate 30deg"

    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_rejects_a_vocabulary_too_small_for_its_words():
    with pytest.raises(ValueError, match="too small"):
        MockTokenizer(vocab_size=64)


# Mock data.

SPEC = DataConfig(batch_size=16, image_size=32, seq_len=64)


def test_batch_shapes_and_dtypes_are_as_documented():
    batch = MockDataset(SPEC, seed=0).batch_at(0)
    b, size, length = 16, 32, 64

    assert list(batch.images) == ["base_0_rgb", "left_wrist_0_rgb"]
    for image in batch.images.values():
        assert (image.shape, image.dtype) == ((b, size, size, 3), np.uint8)
    for name in ("tokenized_prompt_mask", "tokenized_langact_mask", "token_ar_mask", "token_loss_mask"):
        assert (getattr(batch, name).shape, getattr(batch, name).dtype) == ((b, length), np.bool_), name
    assert (batch.tokenized_prompt.shape, batch.tokenized_prompt.dtype) == ((b, length), np.int32)
    assert (batch.sample_mask.shape, batch.sample_mask.dtype) == ((b,), np.bool_)
    assert (batch.state.shape, batch.state.dtype) == ((b, STATE_DIM), np.float32)
    assert (batch.actions.shape, batch.actions.dtype) == ((b, 4, ACTION_DIM), np.float32)
    assert (batch.sample_id.shape, batch.sample_id.dtype) == ((b,), np.int32)
    assert batch.size == b
    assert batch.sample_mask.all()


@pytest.mark.parametrize("num_cameras", [1, 3, 4])
def test_number_of_cameras_is_configurable(num_cameras):
    spec = DataConfig(batch_size=4, image_size=16, num_cameras=num_cameras)
    batch = MockDataset(spec, seed=0).batch_at(0)

    assert list(batch.images) == list(CAMERA_NAMES[:num_cameras])
    assert all(image.shape == (4, 16, 16, 3) for image in batch.images.values())


@pytest.mark.parametrize("num_cameras", [0, 5])
def test_impossible_camera_counts_fail(num_cameras):
    with pytest.raises(ValueError, match="num_cameras"):
        MockDataset(DataConfig(batch_size=4, num_cameras=num_cameras), seed=0)


def test_batch_is_bitwise_the_same_when_rebuilt_and_from_a_fresh_dataset():
    dataset = MockDataset(SPEC, seed=7)
    first = {step: _batch_bytes(dataset.batch_at(step)) for step in (0, 3, 1000)}

    again = {step: _batch_bytes(dataset.batch_at(step)) for step in (1000, 0, 3)}
    fresh = {step: _batch_bytes(MockDataset(SPEC, seed=7).batch_at(step)) for step in (3, 1000, 0)}

    assert again == first
    assert fresh == first


@pytest.mark.parametrize("other", [
    dict(seed=8, process_index=0), dict(seed=7, process_index=1),
], ids=["other_seed", "other_process"])
def test_other_seed_or_process_draws_other_samples(other):
    spec = DataConfig(batch_size=16, image_size=32, seq_len=64)
    mine = MockDataset(spec, seed=7, process_index=0, process_count=2).batch_at(5)
    theirs = MockDataset(spec, process_count=2, **other).batch_at(5)

    for field in ("tokenized_prompt", "state", "actions"):
        assert not np.array_equal(getattr(mine, field), getattr(theirs, field)), field
    assert not np.array_equal(mine.images["base_0_rgb"], theirs.images["base_0_rgb"])


def test_sample_ids_are_unique_across_steps_and_hosts():
    spec = DataConfig(batch_size=16, image_size=16, seq_len=64)
    hosts = [MockDataset(spec, seed=0, process_index=i, process_count=2) for i in range(2)]

    ids = [host.batch_at(step).sample_id for step in range(5) for host in hosts]

    assert all(len(chunk) == 8 for chunk in ids)
    # Step-major, host-minor: together the hosts number every global sample once.
    assert np.concatenate(ids).tolist() == list(range(80))


def test_batch_size_must_split_over_processes():
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        MockDataset(DataConfig(batch_size=16), seed=0, process_count=3)


def test_sample_ids_past_int32_fail_loudly():
    dataset = MockDataset(DataConfig(batch_size=16, image_size=16), seed=0)

    with pytest.raises(OverflowError, match="int32"):
        dataset.batch_at(2**31 // 16)


def test_prompt_layout_and_masks():
    batch = MockDataset(SPEC, seed=1).batch_at(2)

    for i in range(batch.size):
        tokens = batch.tokenized_prompt[i]
        prompt, langact, ar = (batch.tokenized_prompt_mask[i], batch.tokenized_langact_mask[i],
                               batch.token_ar_mask[i])
        act = np.flatnonzero(langact)
        end = act[-1] + 1
        assert prompt.tolist() == (tokens != PAD).tolist()
        assert (langact <= prompt).all()  # langact is a subset of the prompt
        assert act.tolist() == list(range(act[0], end))  # one contiguous span
        assert tokens[0] == BOS and tokens[act[0] - 1] == SEP and tokens[end] == EOS
        assert np.flatnonzero(ar).tolist() == list(range(act[0], end + 1))  # the action and <eos>
        assert not prompt[end + 1:].any()
        assert np.array_equal(batch.token_loss_mask[i], ar)


def test_masks_stay_inside_the_prompt_when_it_is_cut_at_seq_len():
    spec = DataConfig(batch_size=64, image_size=16, seq_len=16)
    batch = MockDataset(spec, seed=0).batch_at(0)
    prompt = batch.tokenized_prompt_mask

    assert prompt[:, -1].any()  # some prompts really were cut
    for mask in (batch.tokenized_langact_mask, batch.token_ar_mask, batch.token_loss_mask):
        assert (mask <= prompt).all()


def test_language_actions_decode_to_readable_moves():
    dataset = MockDataset(SPEC, seed=0)
    batch = dataset.batch_at(0)

    actions = [dataset.tokenizer.decode(batch.tokenized_prompt[i][batch.tokenized_langact_mask[i]])
               for i in range(batch.size)]

    for text in actions:
        match = LANGACT.fullmatch(text)
        assert match, text
        assert all(1 <= int(n) <= 30 for n in re.findall(r"(\d+)cm", text))
    assert len(set(actions)) > 8  # not one caption repeated



@pytest.mark.parametrize("hard_fraction", [0.12, 0.3])
def test_fraction_of_hard_samples_follows_hard_fraction(hard_fraction):
    spec = DataConfig(batch_size=250, image_size=16, seq_len=64, hard_fraction=hard_fraction)
    dataset = MockDataset(spec, seed=3)

    hard = np.concatenate([hard_by_label_noise(dataset.batch_at(step).actions) for step in range(8)])

    # 2000 samples: binomial sd of the rate < 0.011; label-variance misreads are ~0.4%.
    assert abs(hard.mean() - hard_fraction) < 0.035


def test_no_hard_samples_when_hard_fraction_is_zero_and_all_when_one():
    def rate(fraction):
        spec = DataConfig(batch_size=200, image_size=16, seq_len=64, hard_fraction=fraction)
        return hard_by_label_noise(MockDataset(spec, seed=0).batch_at(0).actions).mean()

    assert rate(0.0) < 0.02
    assert rate(1.0) > 0.95
