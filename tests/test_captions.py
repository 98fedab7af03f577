"""Hard-example captions are the prompts that were drawn: the original words, never a
hashed placeholder (`<w99>` was what "with" read as). The oracle is built from the mock
data's word lists alone: every prompt they can make, and the language-action grammar.

    .venv/bin/python -m pytest -q tests/test_captions.py
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from harness.config import DataConfig
from harness.hard_examples.tracker import HardExampleTracker
from harness.mock.data import COLORS, ENDINGS, OBJECTS, PLACES, TASKS, MockDataset
from harness.mock.tokenizer import DIRECTIONS, MAX_AMOUNT, SEP, MockTokenizer

NUM_SAMPLES = 3000
ALL_PROMPTS = {
    f"{task.format(c=color, o=obj, p=place)} {ending}".strip()
    for task, color, obj, place, ending in itertools.product(TASKS, COLORS, OBJECTS, PLACES, ENDINGS)
}
MOVE = rf"move ({'|'.join(DIRECTIONS)}) ({'|'.join(map(str, range(1, MAX_AMOUNT + 1)))})cm"
LANGUAGE_ACTION = re.compile(rf"{MOVE}( and {MOVE}){{0,2}}")


def test_every_word_the_mock_data_can_draw_has_its_own_token():
    words = {word for prompt in ALL_PROMPTS for word in prompt.split()}
    words |= {"move", "and", "cm", *DIRECTIONS, *map(str, range(1, MAX_AMOUNT + 1))}
    vocabulary = set(MockTokenizer().words)

    assert len(ALL_PROMPTS) == len(TASKS) * len(COLORS) * len(OBJECTS) * len(PLACES) * len(ENDINGS) == 12960
    assert sorted(words - vocabulary) == []


def test_captions_over_many_samples_are_the_drawn_prompts_and_actions():
    spec = DataConfig(batch_size=NUM_SAMPLES, image_size=8, seq_len=64)
    dataset = MockDataset(spec, seed=3)
    batch = dataset.batch_at(0)
    tracker = HardExampleTracker(NUM_SAMPLES, dataset.tokenizer, resize_hw=(2, 2))
    tracker.update(0, batch, np.arange(NUM_SAMPLES, dtype=np.float64), batch.sample_id)

    examples = tracker.materialize()

    assert len(examples) == NUM_SAMPLES
    assert [e for e in examples if "<w" in e.prompt + e.lang_action] == []
    assert {e.prompt for e in examples} <= ALL_PROMPTS
    assert all(LANGUAGE_ACTION.fullmatch(e.lang_action) for e in examples)
    assert sum(" with " in e.prompt for e in examples) > NUM_SAMPLES // 10  # "wipe the P with the C O"
    row_of = {int(sample_id): row for row, sample_id in enumerate(batch.sample_id)}
    for example in examples:
        tokens = batch.tokenized_prompt[row_of[example.sample_id]]
        task = tokens[1:int(np.flatnonzero(tokens == SEP)[0])]
        np.testing.assert_array_equal(dataset.tokenizer.encode_words(example.prompt), task)
