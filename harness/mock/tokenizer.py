"""A word-level mock tokenizer for robot prompts and language actions.

Known words (task words, action words, numbers) get fixed ids; any other word is hashed
with a stable hash (blake2b, not Python's salted `hash`) into a bucket range, so
encoding is deterministic across processes and hosts. `decode(encode(text))` gives back
the normalized text for in-vocabulary words. Every word the mock data draws is one
(tests/test_captions.py), so the hard-example captions, decoded from the tokens, are the
prompts that were drawn: a real tokenizer would spell an unknown word in pieces and
decode it back, while a hashed word decodes only as its bucket, `<wN>`.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

PAD, BOS, EOS, SEP = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>")

DIRECTIONS = ("right", "left", "forward", "backward", "up", "down")
ACTION_WORDS = ("move", "and", "cm", "rotate", "deg", "open", "close", "gripper") + DIRECTIONS
TASK_WORDS = (
    "pick", "up", "the", "a", "put", "place", "it", "in", "on", "into", "push", "pull",
    "red", "green", "blue", "yellow", "black", "white", "block", "cup", "bowl", "drawer",
    "sponge", "towel", "lid", "plate", "spoon", "bottle", "marker", "to", "of", "from",
    "table", "shelf", "sink", "left", "right", "side", "top", "wipe", "stack", "fold",
    "then", "slowly", "carefully", "near", "far", "corner", "center", "small", "large", "with",
)
MAX_AMOUNT = 30
NUMBER_WORDS = tuple(str(n) for n in range(1, MAX_AMOUNT + 1))

_UNIT_PATTERN = re.compile(r"(\d+)(cm|deg)\b")


def _build_vocab() -> tuple[str, ...]:
    words: list[str] = list(SPECIAL_TOKENS)
    for word in ACTION_WORDS + TASK_WORDS + NUMBER_WORDS:
        if word not in words:
            words.append(word)
    return tuple(words)


class MockTokenizer:
    """Deterministic word-level tokenizer with hashed out-of-vocabulary buckets.

    Every encoding holds between `min_tokens` and `max_tokens` ids: `<bos>` + words +
    `<eos>`, truncated at `max_tokens`, and padded with `<pad>` up to `min_tokens`.
    """

    def __init__(self, vocab_size: int = 256, min_tokens: int = 10, max_tokens: int = 60):
        self.words = _build_vocab()
        if vocab_size < len(self.words) + 16:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the mock vocabulary needs "
                f"{len(self.words) + 16} ids (known words plus 16 hash buckets)"
            )
        if not 2 <= min_tokens <= max_tokens:
            raise ValueError(f"need 2 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
        self.vocab_size = vocab_size
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        self._ids = {word: i for i, word in enumerate(self.words)}

    def word_id(self, word: str) -> int:
        """Id of one (lower-case) word: its fixed id, or a stable hash bucket."""
        known = self._ids.get(word)
        if known is not None:
            return known
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        buckets = self.vocab_size - len(self.words)
        return len(self.words) + int.from_bytes(digest, "little") % buckets

    def split_words(self, text: str) -> list[str]:
        """Lower-cases and splits `10cm` into `10 cm` so numbers and units are words."""
        return _UNIT_PATTERN.sub(r"\1 \2", text.lower()).split()

    def encode(self, text: str) -> np.ndarray:
        ids = [BOS] + [self.word_id(w) for w in self.split_words(text)]
        ids = ids[: self.max_tokens - 1] + [EOS]
        ids += [PAD] * (self.min_tokens - len(ids))
        return np.asarray(ids, dtype=np.int32)

    def encode_words(self, text: str) -> np.ndarray:
        """Word ids only (no `<bos>`/`<eos>`/padding), for building composite prompts."""
        return np.asarray([self.word_id(w) for w in self.split_words(text)], dtype=np.int32)

    def decode(self, tokens: np.ndarray | list[int]) -> str:
        """Readable text; special tokens are dropped, hashed ids read as `<wN>`."""
        words = []
        for token in np.asarray(tokens, dtype=np.int64).ravel().tolist():
            if 0 <= token < len(SPECIAL_TOKENS):
                continue
            words.append(self.words[token] if token < len(self.words) else f"<w{token}>")
        text = " ".join(words)
        return re.sub(r"\b(\d+) (cm|deg)\b", r"\1\2", text)
