"""What hosts send each other at a hard-example interval, as harness/runtime/messages.py
messages: msgpack, never pickle, decoded as hostile input.

Two payloads, one per gather phase:
- `CandidatePayload` (phase 1, every host): interval stats and top-K candidates, no pixels.
- `ExamplePayload` (phase 2): a host's merged winners, with thumbnails and decoded text.

Their schemas are the Structs below (`CandidateMessage` and `ExampleMessage` with their
parts). Candidates travel as columns, so decoding 1024 hosts' payloads stays in
msgspec's C loops. `host` is sent once and given back to every entry (and the stats).
`step` is the training step the payload was made at; no entry or stats step may be
later. Beyond types and limits: the stats hang together (counts within counts, loss
extremes exactly when there are finite losses), no sample_id comes twice, an image's
bytes fill its (h, w, 3) uint8 shape, and a phase carries at most `max_entries` entries
(the gather's K).

Finite is all the codec asks of a loss: 1.7e308 and subnormals pass, and
`merge.merge_stats` is what keeps sums of them from overflowing.

Tests: `.venv/bin/python -m pytest -q tests/test_codec.py`.
"""

import dataclasses
import itertools
import math
from typing import Literal, TypeVar

import numpy as np

from harness.hard_examples.entry import Candidate, HardExample, IntervalStats
from harness.runtime import messages
from harness.runtime.messages import Finite, Message, MessageError, Natural, Record, array, binary, natural, text

DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_MAX_ENTRIES = 1024
MAX_ENTRIES = 1 << 16  # what the schema lets through at all; `max_entries` is the gather's own bound
MAX_TEXT_CHARS = 4096
MAX_IMAGE_SIDE = 1 << 16

Side = natural(MAX_IMAGE_SIDE, least=1)


class Stats(Record):
    """`IntervalStats` without the host (the payload's)."""

    first_step: Natural | None
    last_step: Natural | None
    num_samples: Natural
    loss_sum: Finite
    loss_max: Finite | None
    loss_min: Finite | None
    num_high_loss: Natural
    num_nonfinite: Natural
    threshold: Finite | None

    def __post_init__(self):
        first, last, samples = self.first_step, self.last_step, self.num_samples
        if (first is None) != (last is None) or (first is None and samples) or (first or 0) > (last or 0):
            raise ValueError(f"steps {first}..{last} don't fit {samples} samples")
        if self.num_nonfinite > samples or self.num_high_loss > samples - self.num_nonfinite:
            raise ValueError(f"{self.num_nonfinite} non-finite and {self.num_high_loss} high losses "
                             f"don't fit {samples} samples")
        has_losses = samples > self.num_nonfinite
        if (self.loss_max is None) == has_losses or (self.loss_min is None) == has_losses:
            raise ValueError(f"loss_max and loss_min must be set exactly when there are finite losses; "
                             f"{samples - self.num_nonfinite} finite, got {self.loss_max}, {self.loss_min}")
        if has_losses and self.loss_min > self.loss_max:
            raise ValueError(f"loss_min {self.loss_min} is above loss_max {self.loss_max}")


class Columns(Record):
    """The candidates, one column per field."""

    sample_id: array(Natural, MAX_ENTRIES)
    loss: array(Finite, MAX_ENTRIES)
    step: array(Natural, MAX_ENTRIES)

    def __post_init__(self):
        if not len(self.sample_id) == len(self.loss) == len(self.step):
            raise ValueError(f"columns of different lengths: {len(self.sample_id)} sample_id, "
                             f"{len(self.loss)} loss, {len(self.step)} step")
        _no_repeats(self.sample_id, "")


class CandidateMessage(Message):
    tag = "candidates"

    host: Natural
    step: Natural
    stats: Stats
    candidates: Columns

    def __post_init__(self):
        _not_after(self.step, self.stats.last_step or 0, "stats: last_step")
        _not_after(self.step, max(self.candidates.step, default=0), "a candidate's step")


class Image(Record):
    bytes: binary(DEFAULT_MAX_BYTES)
    shape: tuple[Side, Side, Literal[3]]
    dtype: Literal["uint8"]

    def __post_init__(self):
        if len(self.bytes) != math.prod(self.shape):
            raise ValueError(f"{len(self.bytes)} bytes don't fill an image of shape {list(self.shape)}")


class Example(Record):
    sample_id: Natural
    loss: Finite
    step: Natural
    lang_action: text(MAX_TEXT_CHARS)
    prompt: text(MAX_TEXT_CHARS)
    token_len: natural(2**31 - 1)
    image: Image


class ExampleMessage(Message):
    tag = "examples"

    host: Natural
    step: Natural
    examples: array(Example, MAX_ENTRIES)

    def __post_init__(self):
        _no_repeats([example.sample_id for example in self.examples], "examples: ")
        _not_after(self.step, max((example.step for example in self.examples), default=0), "an example's step")


def _no_repeats(sample_ids, where: str) -> None:
    if len(set(sample_ids)) != len(sample_ids):
        seen = set()
        repeated = next(i for i in sample_ids if i in seen or seen.add(i))
        raise ValueError(f"{where}sample_id {repeated} appears twice")


def _not_after(step: int, latest: int, what: str) -> None:
    if latest > step:
        raise ValueError(f"{what} {latest} is after the payload's step {step}")


@dataclasses.dataclass(frozen=True)
class CandidatePayload:
    """Phase 1: one host's interval stats and its top-K candidates."""

    host: int
    step: int
    stats: IntervalStats
    candidates: tuple[Candidate, ...]

    def __post_init__(self):
        object.__setattr__(self, "candidates", tuple(self.candidates))


@dataclasses.dataclass(frozen=True)
class ExamplePayload:
    """Phase 2: one host's merged winners, ready to log."""

    host: int
    step: int
    examples: tuple[HardExample, ...]

    def __post_init__(self):
        object.__setattr__(self, "examples", tuple(self.examples))


Payload = TypeVar("Payload", CandidatePayload, ExamplePayload)
_STATS_FIELDS = tuple(Stats.__struct_fields__)
_EXAMPLE_FIELDS = tuple(name for name in Example.__struct_fields__ if name != "image")


def encode_payload(payload: CandidatePayload | ExamplePayload) -> bytes:
    """Payload -> msgpack bytes, after the same checks a receiver makes."""
    if not isinstance(payload, (CandidatePayload, ExamplePayload)):
        raise TypeError(f"expected a CandidatePayload or ExamplePayload, got {type(payload).__name__}")
    where = f"encoding the payload of host {payload.host}"
    if isinstance(payload, CandidatePayload):
        _same_host(where, payload.host, [payload.stats, *payload.candidates])
        stats = {name: getattr(payload.stats, name) for name in _STATS_FIELDS}
        columns = {name: [getattr(c, name) for c in payload.candidates] for name in Columns.__struct_fields__}
        body = {"host": payload.host, "step": payload.step, "stats": stats, "candidates": columns}
        return messages.encode(CandidateMessage, body, source=where)
    _same_host(where, payload.host, payload.examples)
    examples = [_example_fields(where, example) for example in payload.examples]
    return messages.encode(ExampleMessage, {"host": payload.host, "step": payload.step, "examples": examples},
                           source=where)


def decode_payload(
    data: bytes,
    kind: type[Payload],
    *,
    source: str = "payload",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> Payload:
    """Untrusted bytes -> a payload of `kind`, or `MessageError`. `source` starts every
    error message (e.g. "payload from host 3")."""
    if kind is CandidatePayload:
        message = messages.decode(data, CandidateMessage, source=source, max_bytes=max_bytes)
        host, columns = message.host, message.candidates
        _at_most(source, "candidates", len(columns.sample_id), max_entries)
        stats = IntervalStats(host=host, **{name: getattr(message.stats, name) for name in _STATS_FIELDS})
        candidates = map(Candidate, columns.sample_id, columns.loss, columns.step, itertools.repeat(host))
        return CandidatePayload(host, message.step, stats, tuple(candidates))
    if kind is ExamplePayload:
        message = messages.decode(data, ExampleMessage, source=source, max_bytes=max_bytes)
        _at_most(source, "examples", len(message.examples), max_entries)
        return ExamplePayload(message.host, message.step, tuple(
            HardExample(host=message.host, image=np.frombuffer(e.image.bytes, dtype=np.uint8).reshape(e.image.shape),
                        **{name: getattr(e, name) for name in _EXAMPLE_FIELDS})
            for e in message.examples))
    raise TypeError(f"kind must be CandidatePayload or ExamplePayload, got {kind!r}")


def _example_fields(where: str, example: HardExample) -> dict:
    image = example.image
    if not isinstance(image, np.ndarray):
        raise MessageError(f"{where}: example {example.sample_id}'s image is a {type(image).__name__}")
    return {**{name: getattr(example, name) for name in _EXAMPLE_FIELDS},
            "image": {"bytes": image.tobytes(), "shape": list(image.shape), "dtype": image.dtype.name}}


def _same_host(where: str, host: int, entries) -> None:
    others = sorted({entry.host for entry in entries if entry.host != host})
    if others:
        raise MessageError(f"{where}: its entries come from hosts {others}, not from host {host}")


def _at_most(source: str, what: str, count: int, limit: int) -> None:
    if count > limit:
        raise MessageError(f"{source}: {count} {what}, over the limit of {limit}")
