"""The hard-example payload codec: round trips, hostile bytes, exact error messages, sizes.

Run: .venv/bin/python -m pytest -q tests/test_codec.py
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.hard_examples.codec import (
    PAYLOAD_VERSION,
    CandidatePayload,
    ExamplePayload,
    PayloadError,
    decode_payload,
    encode_payload,
    pad_to,
    unpad,
)
from harness.hard_examples.entry import Candidate, HardExample, IntervalStats

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LOSS = st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, -0.0, 1.0, 4.0])
ID = st.integers(0, 2**63 - 1) | st.integers(0, 1000)
TEXT = st.text(max_size=40) | st.sampled_from(["move right 10cm and move forward 5cm", "", "ünïcødé ✓"])


@st.composite
def stats_for(draw, host: int, step: int) -> IntervalStats:
    first = draw(st.none() | st.integers(0, step))
    if first is None:
        return IntervalStats(host, None, None, 0, 0.0, None, None, 0, 0, draw(st.none() | LOSS))
    last = draw(st.integers(first, step))
    num_samples = draw(st.integers(0, 10**6))
    num_nonfinite = draw(st.integers(0, num_samples))
    finite = num_samples - num_nonfinite
    if finite:
        low, high = sorted([draw(LOSS), draw(LOSS)])
    else:
        low = high = None
    return IntervalStats(host, first, last, num_samples, draw(LOSS), high, low,
                         draw(st.integers(0, finite)), num_nonfinite, draw(st.none() | LOSS))


@st.composite
def candidate_payloads(draw) -> CandidatePayload:
    host, step = draw(st.integers(0, 4096)), draw(st.integers(0, 10**9))
    ids = draw(st.lists(ID, max_size=20, unique=True))
    candidates = [Candidate(i, draw(LOSS), draw(st.integers(0, step)), host) for i in ids]
    return CandidatePayload(host, step, draw(stats_for(host, step)), candidates)


@st.composite
def images(draw) -> np.ndarray:
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    data = draw(st.binary(min_size=h * w * 3, max_size=h * w * 3))
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)


@st.composite
def example_payloads(draw) -> ExamplePayload:
    host, step = draw(st.integers(0, 4096)), draw(st.integers(0, 10**9))
    ids = draw(st.lists(ID, max_size=5, unique=True))
    examples = [
        HardExample(i, draw(LOSS), draw(st.integers(0, step)), host, draw(TEXT), draw(TEXT),
                    draw(st.integers(0, 2**31 - 1)), draw(images()))
        for i in ids
    ]
    return ExamplePayload(host, step, examples)


def small_candidates() -> CandidatePayload:
    stats = IntervalStats(3, 10, 19, 160, 321.5, 9.25, 0.5, 12, 1, 6.0)
    return CandidatePayload(3, 20, stats, [Candidate(31, 9.25, 12, 3), Candidate(7, 6.0, 19, 3)])


def small_examples() -> ExamplePayload:
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    examples = [
        HardExample(31, 9.25, 12, 3, "move up 3cm", "pick up the cup", 3, image),
        HardExample(7, 6.0, 19, 3, "move left 5cm and move up 1cm", "wipe the table", 7, image[:, :2]),
    ]
    return ExamplePayload(3, 20, examples)


@FAST
@given(payload=candidate_payloads() | example_payloads())
def test_round_trip(payload):
    decoded = decode_payload(encode_payload(payload), type(payload))
    assert decoded == payload
    entries = decoded.candidates if isinstance(decoded, CandidatePayload) else decoded.examples
    for entry in entries:
        assert type(entry.sample_id) is int and type(entry.loss) is float and type(entry.step) is int
    if isinstance(decoded, ExamplePayload):
        assert all(e.image.dtype == np.uint8 and e.image.ndim == 3 for e in decoded.examples)


@pytest.mark.parametrize("payload", [small_candidates(), small_examples()], ids=["candidates", "examples"])
def test_every_truncation_and_any_trailing_byte_fail(payload):
    data = encode_payload(payload)
    for cut in range(len(data)):
        with pytest.raises(PayloadError):
            decode_payload(data[:cut], type(payload))
    with pytest.raises(PayloadError, match="ExtraData"):
        decode_payload(data + b"\x00", type(payload))


@FAST
@given(data=st.binary(max_size=300))
def test_garbage_only_ever_raises_payload_error(data):
    for kind in (CandidatePayload, ExamplePayload):
        try:
            decode_payload(data, kind)
        except PayloadError:
            pass


@FAST
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       which=st.sampled_from(["candidates", "examples"]))
def test_corrupted_payloads_only_ever_raise_payload_error(flips, which):
    payload = small_candidates() if which == "candidates" else small_examples()
    data = bytearray(encode_payload(payload))
    for position, value in flips:
        data[position % len(data)] = value
    try:
        decoded = decode_payload(bytes(data), type(payload))
    except PayloadError:
        return
    assert isinstance(decoded, type(payload))


def test_oversize_is_refused_before_unpacking(monkeypatch):
    def unpack_must_not_run(*args, **kwargs):
        raise AssertionError("unpackb called on an oversize payload")

    data = encode_payload(small_examples())
    monkeypatch.setattr(msgpack, "unpackb", unpack_must_not_run)
    with pytest.raises(PayloadError, match=rf"payload from host 3: {len(data)} bytes is over the limit of 100"):
        decode_payload(data, ExamplePayload, source="payload from host 3", max_bytes=100)


def test_empty_bytes_and_non_bytes_are_errors():
    with pytest.raises(PayloadError, match="payload from host 5: empty payload"):
        decode_payload(b"", CandidatePayload, source="payload from host 5")
    with pytest.raises(PayloadError, match="expected bytes, got str"):
        decode_payload("hello", CandidatePayload)


def test_too_many_entries_are_refused():
    data = encode_payload(small_candidates())
    with pytest.raises(PayloadError, match="candidates: field 'sample_id' has 2 entries, over the limit of 1"):
        decode_payload(data, CandidatePayload, max_entries=1)
    data = encode_payload(small_examples())
    with pytest.raises(PayloadError, match="field 'examples' has 2 entries, over the limit of 1"):
        decode_payload(data, ExamplePayload, max_entries=1)
    many = [Candidate(i, 1.0, 0, 3) for i in range(10)]
    data = encode_payload(CandidatePayload(3, 20, small_candidates().stats, many))
    with pytest.raises(PayloadError, match=r"not a valid msgpack payload .*exceeds max_array_len\(4\)"):
        decode_payload(data, CandidatePayload, max_entries=4)


def test_version_and_kind_mismatch():
    wire = msgpack.unpackb(encode_payload(small_candidates()))
    with pytest.raises(PayloadError, match=f"version 2 is not the supported version {PAYLOAD_VERSION}"):
        decode_payload(msgpack.packb({**wire, "version": 2}), CandidatePayload)
    with pytest.raises(PayloadError, match="version True is not"):
        decode_payload(msgpack.packb({**wire, "version": True}), CandidatePayload)
    with pytest.raises(PayloadError, match="missing key 'version'"):
        decode_payload(msgpack.packb({k: v for k, v in wire.items() if k != "version"}), CandidatePayload)
    with pytest.raises(PayloadError, match="field 'kind' must be 'examples', got 'candidates'"):
        decode_payload(encode_payload(small_candidates()), ExamplePayload)


def test_repeated_map_keys_are_refused():
    packer = msgpack.Packer()
    wire = msgpack.unpackb(encode_payload(small_candidates()))
    data = packer.pack_map_header(len(wire) + 1)
    for key, value in [*wire.items(), ("host", 4)]:
        data += packer.pack(key) + packer.pack(value)
    with pytest.raises(PayloadError, match="payload: a map repeats the keys 'host'"):
        decode_payload(data, CandidatePayload)


def set_path(wire, path, value):
    """A copy of `wire` with the value at `path` (keys and list indices) replaced; the
    sentinel DELETE removes the key."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(wire) if isinstance(wire, dict) else list(wire)
    if value is DELETE and not rest:
        del copy[head]
    elif not rest:
        copy[head] = value
    else:
        copy[head] = set_path(copy[head], rest, value)
    return copy


DELETE = object()
CANDIDATE_CASES = [
    (("host",), "3", "field 'host' must be an int, got str"),
    (("host",), True, "field 'host' must be an int, got bool"),
    (("host",), -1, r"field 'host' must be in \[0, 9223372036854775807\], got -1"),
    (("step",), 2.0, "field 'step' must be an int, got float"),
    (("stats", "loss_sum"), 321, "stats: field 'loss_sum' must be a float, got int"),
    (("stats", "loss_sum"), math.inf, "stats: field 'loss_sum' must be finite, got inf"),
    (("stats", "loss_max"), "9", "stats: field 'loss_max' must be a float or None, got str"),
    (("stats", "first_step"), [], "stats: field 'first_step' must be an int or None, got list"),
    (("stats", "num_nonfinite"), 161, r"stats: field 'num_nonfinite' must be in \[0, 160\], got 161"),
    (("stats", "num_high_loss"), 160, r"stats: field 'num_high_loss' must be in \[0, 159\], got 160"),
    (("stats", "last_step"), 21, "need first_step <= last_step <= the payload's step 20"),
    (("stats", "first_step"), None, "steps None..19 don't fit 160 samples"),
    (("stats", "loss_min"), None, "loss_max and loss_min must be set exactly when"),
    (("stats", "loss_min"), 9.5, "loss_min 9.5 is above loss_max 9.25"),
    (("stats", "extra"), 1, r"stats: unknown keys \['extra'\]"),
    (("stats", "threshold"), DELETE, r"stats: missing keys \['threshold'\]"),
    (("stats",), [], "stats must be a map, got list"),
    (("candidates", "loss", 1), "6", "candidates: entry 1: field 'loss' must be a float, got str"),
    (("candidates", "loss", 0), math.nan, "candidates: entry 0: field 'loss' must be finite, got nan"),
    (("candidates", "loss", 1), 6, "candidates: entry 1: field 'loss' must be a float, got int"),
    (("candidates", "sample_id", 1), False, "candidates: entry 1: field 'sample_id' must be an int, got bool"),
    (("candidates", "sample_id", 1), -7, r"candidates: entry 1: field 'sample_id' must be in \[0, "),
    (("candidates", "sample_id", 1), 31, "candidates: entry 1: sample_id 31 appears twice"),
    (("candidates", "step", 0), 21, r"candidates: entry 0: field 'step' must be in \[0, 20\], got 21"),
    (("candidates", "step"), [12], "candidates: columns of different lengths: 2 sample_id, 2 loss, 1 step"),
    (("candidates", "step"), {}, "candidates: field 'step' must be an array, got dict"),
    (("candidates", "host"), [3, 3], r"candidates: unknown keys \['host'\]"),
    (("examples",), [], r"top level: unknown keys \['examples'\]"),
    ((), [], "expected a map at the top level, got list"),
]
EXAMPLE_CASES = [
    (("examples", 1, "loss"), "6.0", "examples: entry 1: field 'loss' must be a float, got str"),
    (("examples", 0, "lang_action"), b"move", "examples: entry 0: field 'lang_action' must be a string, got bytes"),
    (("examples", 0, "prompt"), "x" * 4097, "examples: entry 0: field 'prompt' has 4097 characters, over the"),
    (("examples", 1, "token_len"), -1, r"examples: entry 1: field 'token_len' must be in \[0, "),
    (("examples", 1, "sample_id"), 31, "examples: entry 1: sample_id 31 appears twice"),
    (("examples", 0, "step"), 99, r"examples: entry 0: field 'step' must be in \[0, 20\], got 99"),
    (("examples", 0, "image", "dtype"), "float32", "examples: entry 0: field 'image': dtype must be 'uint8'"),
    (("examples", 0, "image", "shape"), [2, 4], "examples: entry 0: field 'image': shape must be an array of 3"),
    (("examples", 0, "image", "shape"), [4, 4, 3], r"field 'image': 24 bytes don't match the shape \[4, 4, 3\]"),
    (("examples", 0, "image", "shape"), [2, 2, 6], r"field 'image': shape must be \(h >= 1, w >= 1, 3\)"),
    (("examples", 0, "image", "shape", 0), 2.0, r"field 'image': shape\[0\] must be an int, got float"),
    (("examples", 0, "image", "bytes"), "abc", "field 'image': bytes must be a bin, got str"),
    (("examples", 0, "image", "bytes"), b"abc", r"field 'image': 3 bytes don't match the shape \[2, 4, 3\]"),
    (("examples", 0, "image"), None, "examples: entry 0: field 'image' must be a map, got None"),
    (("examples", 0, "host"), 3, r"examples: entry 0: unknown keys \['host'\]"),
    (("examples", 1), [], "examples: entry 1 must be a map, got list"),
    (("examples",), {}, "field 'examples' must be an array, got dict"),
]


def assert_refused(payload, path, value, message):
    wire = msgpack.unpackb(encode_payload(payload))
    data = msgpack.packb(set_path(wire, path, value))
    with pytest.raises(PayloadError, match=r"^payload from host 3: ") as error:
        decode_payload(data, type(payload), source="payload from host 3")
    assert error.match(message)


@pytest.mark.parametrize("path, value, message", CANDIDATE_CASES)
def test_bad_candidate_fields_are_named(path, value, message):
    assert_refused(small_candidates(), path, value, message)


@pytest.mark.parametrize("path, value, message", EXAMPLE_CASES)
def test_bad_example_fields_are_named(path, value, message):
    assert_refused(small_examples(), path, value, message)


def test_encode_checks_what_receivers_check():
    with pytest.raises(PayloadError, match="entry 0: field 'loss' must be a float, got float32"):
        empty = IntervalStats(0, None, None, 0, 0.0, None, None, 0, 0, None)
        encode_payload(CandidatePayload(0, 5, empty, [Candidate(1, np.float32(2.0), 1, 0)]))
    with pytest.raises(PayloadError, match=r"candidates come from hosts \[4\], not from host 3"):
        encode_payload(CandidatePayload(3, 20, small_candidates().stats, [Candidate(1, 2.0, 1, 4)]))
    with pytest.raises(PayloadError, match=r"stats come from hosts \[3\], not from host 2"):
        encode_payload(CandidatePayload(2, 20, small_candidates().stats, []))
    example = small_examples().examples[0]
    bad_image = HardExample(1, 2.0, 3, 3, "a", "b", 1, example.image.astype(np.float32))
    with pytest.raises(PayloadError, match="dtype must be 'uint8', got 'float32'"):
        encode_payload(ExamplePayload(3, 20, [bad_image]))
    with pytest.raises(TypeError, match="expected a CandidatePayload or ExamplePayload"):
        encode_payload(small_candidates().stats)


def test_encoded_sizes():
    """K=50 examples of (64, 128, 3) thumbnails cost their pixels and text plus 113 bytes
    each: 73 of field names, 20 of id/loss/step/token_len, 20 of map, string and bin
    headers, shape and dtype. Candidates cost 19 bytes each."""
    rng = np.random.default_rng(0)
    k, shape = 50, (64, 128, 3)
    action = "move backward 30cm and move forward 25cm and move right 17cm"
    prompt = "pick up the yellow sponge and put it in the drawer to the far right corner of the table"
    examples = [
        HardExample(2**31 - 1 - i, 12.345 + i, 10**6, 1023, action, prompt, 12,
                    rng.integers(0, 256, shape, dtype=np.uint8))
        for i in range(k)
    ]
    data = encode_payload(ExamplePayload(1023, 10**6, examples))
    empty = encode_payload(ExamplePayload(1023, 10**6, []))
    pixels = k * math.prod(shape)
    text = k * (len(action) + len(prompt))
    overhead = len(data) - pixels - text
    print(f"\nexamples payload: {len(data)} bytes = {pixels} pixels + {text} text + {overhead} overhead "
          f"({overhead / k:.0f} bytes per example)")
    assert len(data) == len(empty) + 2 + pixels + text + k * 113  # 2: the array header grows
    assert len(data) <= 1.011 * pixels

    stats = IntervalStats(1023, 0, 10**6, 10**6, 2.5e6, 15.0, 0.01, 9000, 3, 7.0)
    candidates = [Candidate(2**31 - 1 - i, 12.345 + i, 10**6, 1023) for i in range(k)]
    data = encode_payload(CandidatePayload(1023, 10**6, stats, candidates))
    print(f"candidates payload: {len(data)} bytes for {k} candidates")
    assert len(data) <= 250 + k * 19
    empty = encode_payload(CandidatePayload(1023, 10**6, stats, []))
    # Per candidate: uint32 id, float64 loss, uint32 step; each column's array header grows by 2.
    assert len(data) - len(empty) == k * (5 + 9 + 5) + 3 * 2


def test_pad_and_unpad():
    data = encode_payload(small_candidates())
    row = pad_to(data, len(data) + 7)
    assert row.dtype == np.uint8 and row.shape == (len(data) + 7,) and not row[len(data):].any()
    assert unpad(row, np.int64(len(data))) == data
    assert decode_payload(unpad(row, len(data)), CandidatePayload) == small_candidates()
    assert pad_to(b"", 0).shape == (0,) and unpad(np.zeros(3, np.uint8), 0) == b""
    with pytest.raises(ValueError, match="don't fit in a row of 3"):
        pad_to(b"abcd", 3)
    with pytest.raises(PayloadError, match=f"payload from host 2: length {row.size + 1} is outside the row's"):
        unpad(row, row.size + 1, source="payload from host 2")
    with pytest.raises(PayloadError, match="length -1 is outside"):
        unpad(row, -1)
    with pytest.raises(PayloadError, match="expected a 1-D uint8 row"):
        unpad(row.reshape(1, -1), 3)

