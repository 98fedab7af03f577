"""Wire format for what hosts send each other at a hard-example interval: msgpack, never
pickle, so bytes from another host can only ever become the data described here.

Two payload kinds, one per gather phase:
- `CandidatePayload` (phase 1, every host): interval stats and top-K candidates, no pixels.
- `ExamplePayload` (phase 2): a host's merged winners, with thumbnails and decoded text.

Schema, version 1. Every key is required and no other key is allowed:

    {"version": 1, "kind": "candidates", "host": int, "step": int,
     "stats": {"first_step": int|nil, "last_step": int|nil, "num_samples": int,
               "loss_sum": float, "loss_max": float|nil, "loss_min": float|nil,
               "num_high_loss": int, "num_nonfinite": int, "threshold": float|nil},
     "candidates": {"sample_id": [int, ...], "loss": [float, ...], "step": [int, ...]}}

    {"version": 1, "kind": "examples", "host": int, "step": int,
     "examples": [{"sample_id": int, "loss": float, "step": int, "lang_action": str,
                   "prompt": str, "token_len": int,
                   "image": {"bytes": bin, "shape": [h, w, 3], "dtype": "uint8"}}, ...]}

Candidates travel as columns, so decoding 1024 hosts' payloads stays a few vectorized
checks per host. `host` is sent once and given back to every entry (and the stats).
`step` is the training step the payload was made at; no entry or stats step may be later.

Decoding treats the bytes as hostile: the size is checked before unpacking, msgpack's
own limits bound every allocation, and then every field is checked for its exact type
(an int is not a float, a bool is not an int) and a sane value (finite losses, ids and
steps in [0, 2**63), texts of at most `MAX_TEXT_CHARS`, stats that hang together, no
sample_id twice). Our encoder always writes floats as floats, so an int where a float
belongs means a foreign or broken writer and is refused. Any failure, truncation and
trailing bytes included, raises `PayloadError` naming the source, the place and the
problem, and nothing else escapes: msgpack stops nesting at 1024 levels (StackError),
the checks here never recurse, and a RecursionError or MemoryError while unpacking
becomes a `PayloadError` too. Messages quote the sender's values through a bounded repr
(a few levels deep, a few dozen characters) and are cut at `MAX_MESSAGE_CHARS`, so a
16 MB string or a 1000-level map costs a line in the log, not a crash or a flood.
`encode_payload` runs the same checks first, so a host can't send what the others
would reject.

Finite is all the codec asks of a loss: 1.7e308 and subnormals pass, and
`merge.merge_stats` is what keeps sums of them from overflowing.

Tests: `.venv/bin/python -m pytest -q tests/test_codec.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import reprlib
from typing import Any, NoReturn, TypeVar

import msgpack
import numpy as np

from harness.hard_examples.entry import Candidate, HardExample, IntervalStats

PAYLOAD_VERSION = 1
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_MAX_ENTRIES = 1024
MAX_TEXT_CHARS = 4096
MAX_MESSAGE_CHARS = 500

_INT_LIMIT = 2**63 - 1
_TOKEN_LEN_LIMIT = 2**31 - 1
_IMAGE_SIDE_LIMIT = 1 << 16
_MAX_MAP_LEN = 16
_STATS_KEYS = (
    "first_step", "last_step", "num_samples", "loss_sum", "loss_max", "loss_min",
    "num_high_loss", "num_nonfinite", "threshold",
)
_CANDIDATE_COLUMNS = ("sample_id", "loss", "step")
_EXAMPLE_KEYS = ("sample_id", "loss", "step", "lang_action", "prompt", "token_len", "image")
_IMAGE_KEYS = ("bytes", "shape", "dtype")


class PayloadError(ValueError):
    """A payload that can't be encoded or decoded; the message says where and why, in at
    most `MAX_MESSAGE_CHARS` characters (it ends up in every host's log)."""

    def __init__(self, message: str):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)


class _BoundedRepr(reprlib.Repr):
    """repr() for values another host sent. The builtin recurses (a 1000-level map is a
    RecursionError) and quotes a 64 MiB bin in full; this one stops 3 levels down, cuts
    strings and bytes to 40 characters before quoting them, and the whole to 100."""

    def __init__(self):
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 40

    repr_bytes = reprlib.Repr.repr_str

    def repr(self, value: Any) -> str:
        text = super().repr(value)
        return text if len(text) <= 100 else text[:97] + "..."


_quote = _BoundedRepr().repr


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
_KINDS = {CandidatePayload: "candidates", ExamplePayload: "examples"}


def encode_payload(payload: CandidatePayload | ExamplePayload) -> bytes:
    """Payload -> msgpack bytes, after the same checks a receiver makes."""
    if type(payload) not in _KINDS:
        raise TypeError(f"expected a CandidatePayload or ExamplePayload, got {type(payload).__name__}")
    wire = _to_wire(payload)
    _Reader(f"encoding the payload of host {payload.host}", max_entries=None).payload(wire, type(payload))
    return msgpack.packb(wire, use_bin_type=True, strict_types=True)


def decode_payload(
    data: bytes,
    kind: type[Payload],
    *,
    source: str = "payload",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> Payload:
    """Untrusted bytes -> a payload of `kind`, or `PayloadError`. `source` starts every
    error message (e.g. "payload from host 3")."""
    if kind not in _KINDS:
        raise TypeError(f"kind must be CandidatePayload or ExamplePayload, got {kind!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"{source}: expected bytes, got {type(data).__name__}")
    size = memoryview(data).nbytes
    if size == 0:
        raise PayloadError(f"{source}: empty payload")
    if size > max_bytes:
        raise PayloadError(f"{source}: {size} bytes is over the limit of {max_bytes}")

    def unique_keys(pairs: list[tuple[Any, Any]]) -> dict:
        mapping = dict(pairs)
        if len(mapping) != len(pairs):
            keys = [key for key, _ in pairs]
            repeated = sorted({_quote(key) for key in keys if keys.count(key) > 1})
            raise PayloadError(f"{source}: a map repeats the keys {', '.join(repeated)}")
        return mapping

    try:
        wire = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=unique_keys,
            max_bin_len=max_bytes,
            max_str_len=4 * MAX_TEXT_CHARS,
            max_array_len=max(max_entries, 3),
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=0,
        )
    except PayloadError:
        raise
    except (RecursionError, MemoryError) as err:
        # The bytes decide how deep and how big the unpacked objects get: running out of
        # either is a bad payload, to be skipped like any other, not a crash.
        raise PayloadError(f"{source}: too deep or too large to unpack ({type(err).__name__})") from err
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as err:
        why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__  # StackError has no text
        raise PayloadError(f"{source}: not a valid msgpack payload ({why})") from err
    return _Reader(source, max_entries=max_entries).payload(wire, kind)


def _to_wire(payload: CandidatePayload | ExamplePayload) -> dict:
    header = {"version": PAYLOAD_VERSION, "kind": _KINDS[type(payload)], "host": payload.host,
              "step": payload.step}
    where = f"encoding the payload of host {payload.host}"
    if isinstance(payload, CandidatePayload):
        _same_host(where, payload.host, [payload.stats], "stats")
        _same_host(where, payload.host, payload.candidates, "candidates")
        columns = {name: [getattr(c, name) for c in payload.candidates] for name in _CANDIDATE_COLUMNS}
        stats = {name: getattr(payload.stats, name) for name in _STATS_KEYS}
        return {**header, "stats": stats, "candidates": columns}
    _same_host(where, payload.host, payload.examples, "examples")
    examples = []
    for example in payload.examples:
        entry = {name: getattr(example, name) for name in _EXAMPLE_KEYS[:-1]}
        image = example.image
        if not isinstance(image, np.ndarray):
            raise PayloadError(f"{where}: example {example.sample_id}'s image is a {type(image).__name__}")
        entry["image"] = {"bytes": image.tobytes(), "shape": list(image.shape), "dtype": image.dtype.name}
        examples.append(entry)
    return {**header, "examples": examples}


def _same_host(where: str, host: int, entries, name: str) -> None:
    others = sorted({entry.host for entry in entries if entry.host != host})
    if others:
        raise PayloadError(f"{where}: {name} come from hosts {others}, not from host {host}")


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


class _Reader:
    """Checks a decoded msgpack object against the schema and builds the records."""

    def __init__(self, source: str, max_entries: int | None):
        self.source = source
        self.max_entries = max_entries

    def fail(self, problem: str) -> NoReturn:
        raise PayloadError(f"{self.source}: {problem}")

    def payload(self, wire: Any, kind: type[Payload]) -> Payload:
        if type(wire) is not dict:
            self.fail(f"expected a map at the top level, got {_type_name(wire)}")
        if "version" not in wire:
            self.fail("missing key 'version'")
        version = wire["version"]
        if type(version) is not int or version != PAYLOAD_VERSION:
            self.fail(f"version {_quote(version)} is not the supported version {PAYLOAD_VERSION}")
        expected = _KINDS[kind]
        if wire.get("kind") != expected:
            self.fail(f"field 'kind' must be {expected!r}, got {_quote(wire.get('kind'))}")
        body = ("stats", "candidates") if kind is CandidatePayload else ("examples",)
        self.keys(wire, "top level", ("version", "kind", "host", "step", *body))
        host = self.integer(wire["host"], "field 'host'")
        step = self.integer(wire["step"], "field 'step'")
        if kind is CandidatePayload:
            stats = self.stats(wire["stats"], host, step)
            return CandidatePayload(host, step, stats, self.candidates(wire["candidates"], host, step))
        return ExamplePayload(host, step, self.examples(wire["examples"], host, step))

    def keys(self, value: Any, where: str, keys: tuple[str, ...]) -> dict:
        if type(value) is not dict:
            self.fail(f"{where} must be a map, got {_type_name(value)}")
        missing = [key for key in keys if key not in value]
        if missing:
            self.fail(f"{where}: missing keys {missing}")
        unknown = [key for key in value if key not in keys]
        if unknown:
            self.fail(f"{where}: unknown keys {_quote(unknown)}")
        return value

    def integer(
        self, value: Any, where: str, *, limit: int = _INT_LIMIT, optional: bool = False
    ) -> int | None:
        if optional and value is None:
            return None
        if type(value) is not int:
            self.fail(f"{where} must be an int{' or None' if optional else ''}, got {_type_name(value)}")
        if not 0 <= value <= limit:
            self.fail(f"{where} must be in [0, {limit}], got {value}")
        return value

    def number(self, value: Any, where: str, *, optional: bool = False) -> float | None:
        if optional and value is None:
            return None
        if type(value) is not float:
            self.fail(f"{where} must be a float{' or None' if optional else ''}, got {_type_name(value)}")
        if not math.isfinite(value):
            self.fail(f"{where} must be finite, got {value}")
        return value

    def text(self, value: Any, where: str) -> str:
        if type(value) is not str:
            self.fail(f"{where} must be a string, got {_type_name(value)}")
        if len(value) > MAX_TEXT_CHARS:
            self.fail(f"{where} has {len(value)} characters, over the limit of {MAX_TEXT_CHARS}")
        return value

    def array(self, value: Any, where: str) -> list:
        if type(value) is not list:
            self.fail(f"{where} must be an array, got {_type_name(value)}")
        if self.max_entries is not None and len(value) > self.max_entries:
            self.fail(f"{where} has {len(value)} entries, over the limit of {self.max_entries}")
        return value

    def stats(self, value: Any, host: int, step: int) -> IntervalStats:
        fields = self.keys(value, "stats", _STATS_KEYS)
        at = "stats: field {!r}".format
        first_step = self.integer(fields["first_step"], at("first_step"), optional=True)
        last_step = self.integer(fields["last_step"], at("last_step"), optional=True)
        num_samples = self.integer(fields["num_samples"], at("num_samples"))
        num_nonfinite = self.integer(fields["num_nonfinite"], at("num_nonfinite"), limit=num_samples)
        num_high_loss = self.integer(
            fields["num_high_loss"], at("num_high_loss"), limit=num_samples - num_nonfinite
        )
        loss_sum = self.number(fields["loss_sum"], at("loss_sum"))
        loss_max = self.number(fields["loss_max"], at("loss_max"), optional=True)
        loss_min = self.number(fields["loss_min"], at("loss_min"), optional=True)
        threshold = self.number(fields["threshold"], at("threshold"), optional=True)
        if (first_step is None) != (last_step is None) or (first_step is None and num_samples):
            self.fail(f"stats: steps {first_step}..{last_step} don't fit {num_samples} samples")
        if first_step is not None and not first_step <= last_step <= step:
            self.fail(f"stats: need first_step <= last_step <= the payload's step {step}, "
                      f"got {first_step}, {last_step}")
        has_losses = num_samples > num_nonfinite
        if (loss_max is None) == has_losses or (loss_min is None) == has_losses:
            self.fail(f"stats: loss_max and loss_min must be set exactly when there are finite "
                      f"losses; {num_samples - num_nonfinite} finite, got {loss_max}, {loss_min}")
        if has_losses and loss_min > loss_max:
            self.fail(f"stats: loss_min {loss_min} is above loss_max {loss_max}")
        return IntervalStats(host, first_step, last_step, num_samples, loss_sum, loss_max, loss_min,
                             num_high_loss, num_nonfinite, threshold)

    def candidates(self, value: Any, host: int, step: int) -> tuple[Candidate, ...]:
        columns = self.keys(value, "candidates", _CANDIDATE_COLUMNS)
        ids, losses, steps = (
            self.array(columns[name], f"candidates: field {name!r}") for name in _CANDIDATE_COLUMNS
        )
        if not len(ids) == len(losses) == len(steps):
            self.fail(f"candidates: columns of different lengths: {len(ids)} sample_id, "
                      f"{len(losses)} loss, {len(steps)} step")
        self.int_column(ids, "sample_id", _INT_LIMIT)
        self.int_column(steps, "step", step)
        if not set(map(type, losses)) <= {float} or not np.isfinite(np.array(losses, np.float64)).all():
            for i, loss in enumerate(losses):
                self.number(loss, f"candidates: entry {i}: field 'loss'")
        if len(set(ids)) != len(ids):
            seen = set()
            for i, sample_id in enumerate(ids):
                if sample_id in seen:
                    self.fail(f"candidates: entry {i}: sample_id {sample_id} appears twice")
                seen.add(sample_id)
        return tuple(map(Candidate, ids, losses, steps, itertools.repeat(host, len(ids))))

    def int_column(self, values: list, name: str, limit: int) -> None:
        # Fast path in C (set of types, min/max); the slow loop only finds the culprit.
        if set(map(type, values)) <= {int} and (not values or 0 <= min(values) <= max(values) <= limit):
            return
        for i, v in enumerate(values):
            self.integer(v, f"candidates: entry {i}: field {name!r}", limit=limit)

    def examples(self, value: Any, host: int, step: int) -> tuple[HardExample, ...]:
        examples = []
        seen = set()
        for i, entry in enumerate(self.array(value, "field 'examples'")):
            where = f"examples: entry {i}"
            fields = self.keys(entry, where, _EXAMPLE_KEYS)
            at = f"{where}: field {{!r}}".format
            sample_id = self.integer(fields["sample_id"], at("sample_id"))
            if sample_id in seen:
                self.fail(f"{where}: sample_id {sample_id} appears twice")
            seen.add(sample_id)
            examples.append(HardExample(
                sample_id=sample_id,
                loss=self.number(fields["loss"], at("loss")),
                step=self.integer(fields["step"], at("step"), limit=step),
                host=host,
                lang_action=self.text(fields["lang_action"], at("lang_action")),
                prompt=self.text(fields["prompt"], at("prompt")),
                token_len=self.integer(fields["token_len"], at("token_len"), limit=_TOKEN_LEN_LIMIT),
                image=self.image(fields["image"], at("image")),
            ))
        return tuple(examples)

    def image(self, value: Any, where: str) -> np.ndarray:
        fields = self.keys(value, where, _IMAGE_KEYS)
        if type(fields["dtype"]) is not str or fields["dtype"] != "uint8":
            self.fail(f"{where}: dtype must be 'uint8', got {_quote(fields['dtype'])}")
        shape = fields["shape"]
        if type(shape) is not list or len(shape) != 3:
            self.fail(f"{where}: shape must be an array of 3 ints, got {_quote(shape)}")
        for axis, size in enumerate(shape):
            self.integer(size, f"{where}: shape[{axis}]", limit=_IMAGE_SIDE_LIMIT)
        if shape[2] != 3 or min(shape) < 1:
            self.fail(f"{where}: shape must be (h >= 1, w >= 1, 3), got {shape}")
        data = fields["bytes"]
        if type(data) is not bytes:
            self.fail(f"{where}: bytes must be a bin, got {_type_name(data)}")
        if len(data) != math.prod(shape):
            self.fail(f"{where}: {len(data)} bytes don't match the shape {shape}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
