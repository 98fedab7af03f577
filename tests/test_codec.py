"""The hard-example payload codec: round trips, hostile bytes, exact error messages, sizes.

The hostile-input properties (10,000 generated inputs, ~15 s on 2 cores) hold
decode_payload to its contract: a payload or a PayloadError with a short message, and
nothing else, for random bytes, truncated and mutated payloads, deep nesting, oversized
strings and arrays, any float bit pattern and any msgpack value at any field.
`HOSTILE_ENCODERS` is shared with tests/test_gather_hostile.py.

Run: .venv/bin/python -m pytest -q tests/test_codec.py
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable, Iterator
from functools import partial

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.hard_examples.codec import (
    MAX_MESSAGE_CHARS,
    PAYLOAD_VERSION,
    CandidatePayload,
    ExamplePayload,
    PayloadError,
    decode_payload,
    encode_payload,
)
from harness.hard_examples.entry import Candidate, HardExample, IntervalStats

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hostile(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))


LOSS = st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, -0.0, 1.0, 4.0])
EXTREME_FLOATS = [sys.float_info.max, -sys.float_info.max, 1.7e308, -1.7e308, 5e-324, -5e-324,
                  sys.float_info.min, 1e30, -1e30, 0.0, -0.0]
# Finite, any exponent: hypothesis's floats() already favours subnormals and the extremes.
ANY_FINITE = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(EXTREME_FLOATS)
# Infinities and NaNs of either sign, quiet and signalling, with payloads.
NONFINITE_BITS = [0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0xFFF8000000000000,
                  0x7FF0000000000001, 0x7FF4000000000000, 0xFFFFFFFFFFFFFFFF]
NONFINITE_FLOAT32_BITS = [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF]
ID = st.integers(0, 2**63 - 1) | st.integers(0, 1000)
TEXT = st.text(max_size=40) | st.sampled_from(["move right 10cm and move forward 5cm", "", "ünïcødé ✓"])


@st.composite
def stats_for(draw, host: int, step: int, loss: st.SearchStrategy[float] = LOSS) -> IntervalStats:
    first = draw(st.none() | st.integers(0, step))
    if first is None:
        return IntervalStats(host, None, None, 0, 0.0, None, None, 0, 0, draw(st.none() | loss))
    last = draw(st.integers(first, step))
    num_samples = draw(st.integers(0, 10**6))
    num_nonfinite = draw(st.integers(0, num_samples))
    finite = num_samples - num_nonfinite
    if finite:
        low, high = sorted([draw(loss), draw(loss)])
    else:
        low = high = None
    return IntervalStats(host, first, last, num_samples, draw(loss), high, low,
                         draw(st.integers(0, finite)), num_nonfinite, draw(st.none() | loss))


@st.composite
def candidate_payloads(draw, loss: st.SearchStrategy[float] = LOSS) -> CandidatePayload:
    host, step = draw(st.integers(0, 4096)), draw(st.integers(0, 10**9))
    ids = draw(st.lists(ID, max_size=20, unique=True))
    candidates = [Candidate(i, draw(loss), draw(st.integers(0, step)), host) for i in ids]
    return CandidatePayload(host, step, draw(stats_for(host, step, loss)), candidates)


@st.composite
def images(draw) -> np.ndarray:
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    data = draw(st.binary(min_size=h * w * 3, max_size=h * w * 3))
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)


@st.composite
def example_payloads(draw, loss: st.SearchStrategy[float] = LOSS) -> ExamplePayload:
    host, step = draw(st.integers(0, 4096)), draw(st.integers(0, 10**9))
    ids = draw(st.lists(ID, max_size=5, unique=True))
    examples = [
        HardExample(i, draw(loss), draw(st.integers(0, step)), host, draw(TEXT), draw(TEXT),
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
@given(payload=st.one_of(candidate_payloads(), example_payloads(), candidate_payloads(ANY_FINITE),
                         example_payloads(ANY_FINITE)))
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


# ---------------------------------------------------------------------------------------
# Hostile bytes. Each strategy draws an `Encoder`: what a broken or malicious host sends
# in place of the payload it should have sent (a partial, so a failing example prints
# what was done). tests/test_gather_hostile.py sends the same from a simulated host.

Encoder = Callable[[CandidatePayload | ExamplePayload], bytes]
PLACEHOLDER = b"\xffplaceholder for hostile bytes\xff"


def decode_or_refuse(data: bytes, kind: type) -> CandidatePayload | ExamplePayload | None:
    """decode_payload's whole contract on hostile bytes: a payload that encodes back to
    itself, or a PayloadError naming the source in under MAX_MESSAGE_CHARS (short by
    quoting, not by the cut); any other exception fails the test."""
    try:
        decoded = decode_payload(data, kind, source="payload from host 3")
    except PayloadError as err:
        message = str(err)
        assert message.startswith("payload from host 3: ") and len(message) < MAX_MESSAGE_CHARS, message
        return None
    assert decode_payload(encode_payload(decoded), kind) == decoded
    return decoded


def wire_of(payload: CandidatePayload | ExamplePayload) -> dict:
    return msgpack.unpackb(encode_payload(payload))


def places(wire, path: tuple = ()) -> Iterator[tuple[tuple, object]]:
    """(path, value) for every place in a wire object: the top, each map value, each
    array element."""
    yield path, wire
    children = wire.items() if isinstance(wire, dict) else enumerate(wire) if isinstance(wire, list) else ()
    for key, child in children:
        yield from places(child, (*path, key))


def splice(wire: dict, path: tuple, raw: bytes) -> bytes:
    """`wire` packed with the msgpack bytes `raw`, taken as they are, as the value at `path`."""
    marker = msgpack.packb(PLACEHOLDER)
    data = msgpack.packb(set_path(wire, path, PLACEHOLDER))
    assert data.count(marker) == 1
    return data.replace(marker, raw)


def send_bytes(payload, *, data: bytes) -> bytes:
    return data


def splice_at(payload, *, raw: bytes, which: int) -> bytes:
    """The payload with `raw` at its place number `which` (modulo the number of places)."""
    wire = wire_of(payload)
    paths = [path for path, _ in places(wire)]
    return splice(wire, paths[which % len(paths)], raw)


def delete_at(payload, *, which: int) -> bytes:
    """The payload without one of its places below the top."""
    wire = wire_of(payload)
    paths = [path for path, _ in places(wire)][1:]
    return msgpack.packb(set_path(wire, paths[which % len(paths)], DELETE))


def add_key_at(payload, *, which: int, key: str | bytes, value) -> bytes:
    """The payload with `key: value` added to one of its maps."""
    wire = wire_of(payload)
    maps = [path for path, value in places(wire) if isinstance(value, dict)]
    return msgpack.packb(set_path(wire, (*maps[which % len(maps)], key), value))


def mutate(payload, *, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    """The payload's bytes, edited: cut, a byte changed, bytes inserted, deleted or repeated."""
    data = bytearray(encode_payload(payload))
    for op, where, byte, chunk in edits:
        i = where % (len(data) + 1)
        if op == "truncate":
            del data[i:]
        elif op == "change" and data:
            data[i % len(data)] ^= byte
        elif op == "insert":
            data[i:i] = chunk
        elif op == "delete":
            del data[i:i + len(chunk)]
        elif op == "repeat":
            data[i:i] = data[i:i + 64]
    return bytes(data)


def at_any_place(raw_values: st.SearchStrategy[bytes]) -> st.SearchStrategy[Encoder]:
    return st.builds(partial, st.just(splice_at), raw=raw_values, which=st.integers(0, 2**16))


RANDOM_BYTES = st.builds(partial, st.just(send_bytes), data=st.binary(max_size=2000))
MUTATIONS = st.builds(partial, st.just(mutate), edits=st.lists(st.tuples(
    st.sampled_from(["truncate", "change", "insert", "delete", "repeat"]),
    st.integers(0, 2**20), st.integers(1, 255), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
# A map or array nested up to 3000 deep (msgpack stops at 1024), in any of its encodings.
NEST_LEVELS = [b"\x91", b"\xdc\x00\x01", b"\xdd\x00\x00\x00\x01", b"\x81\xa0", b"\x81\xa7version",
               b"\x92\xc0", b"\x82\xa1a\x01\xa1b"]
DEEP_VALUES = st.builds(
    lambda level, depth, inner: level * depth + inner,
    st.sampled_from(NEST_LEVELS),
    st.integers(2, 3000) | st.sampled_from([999, 1000, 1023, 1024, 1025]),
    st.sampled_from([b"\x01", b"\xc0", msgpack.packb(1.7e308), msgpack.packb("x" * 100), b""]),
)
BIG_KEYS = st.sampled_from(["x" * 16384, b"k" * 50_000])  # the longest str decoding lets through; a long bin
# Headers that promise far more than follows, and long strings, bins, arrays and maps.
CLAIMED_LENGTHS = st.builds(
    lambda header, width, length, tail: header + (length % 256**width).to_bytes(width, "big") + tail,
    st.sampled_from([b"\xda", b"\xc5", b"\xdc", b"\xde", b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9"]),
    st.sampled_from([2, 4]), st.integers(2**15, 2**32 - 1), st.binary(max_size=16),
)
OVERSIZED_VALUES = st.one_of(
    CLAIMED_LENGTHS,
    st.builds(lambda char, n: msgpack.packb(char * n), st.sampled_from(["x", "é", "✓"]), st.integers(4000, 20000)),
    st.builds(lambda n: msgpack.packb(bytes(n)), st.integers(1, 50_000)),
    st.builds(lambda item, n: msgpack.packb([item] * n), st.sampled_from([0, 1.0, "x", None]), st.integers(3, 5000)),
    st.builds(lambda n: msgpack.packb({f"k{i}": i for i in range(n)}), st.integers(12, 40)),
    st.builds(lambda key: msgpack.packb({key: 1}), BIG_KEYS),
)
# Any float64 or float32 bit pattern, the non-finite ones often.
FLOAT_BITS = st.one_of(
    (st.sampled_from(NONFINITE_BITS) | st.integers(0, 2**64 - 1)).map(lambda b: b"\xcb" + struct.pack(">Q", b)),
    (st.sampled_from(NONFINITE_FLOAT32_BITS) | st.integers(0, 2**32 - 1)).map(lambda b: b"\xca" + struct.pack(">I", b)),
)
# Any msgpack value: every type, out-of-range ints, NaNs, long keys, a few levels deep.
HOSTILE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.sampled_from(EXTREME_FLOATS)
    | st.text(max_size=20) | st.binary(max_size=20) | BIG_KEYS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8) | BIG_KEYS,
                                                                 inner, max_size=4),
    max_leaves=10,
)
WHICH = st.integers(0, 2**16)
RESHAPES = (st.builds(partial, st.just(delete_at), which=WHICH)
            | st.builds(partial, st.just(add_key_at), which=WHICH, key=st.text(max_size=8) | BIG_KEYS,
                        value=HOSTILE_VALUES))
ANY_VALUE_ANYWHERE = at_any_place(HOSTILE_VALUES.map(msgpack.packb)) | at_any_place(FLOAT_BITS) | RESHAPES
# The payloads the hostile encoders start from: fixed, since drawing a payload costs far
# more than decoding one, and the encoders draw the hostile part. test_round_trip covers
# drawn payloads.
BASE_PAYLOADS = [
    small_candidates(),
    small_examples(),
    CandidatePayload(2, 9, IntervalStats(2, 0, 9, 3, 1.7e308, 1.7e308, 5e-324, 1, 0, -0.0), [
        Candidate(2**63 - 1, 1.7e308, 9, 2), Candidate(0, 5e-324, 0, 2), Candidate(5, -sys.float_info.max, 3, 2)]),
    CandidatePayload(0, 0, IntervalStats(0, None, None, 0, 0.0, None, None, 0, 0, None), []),
    CandidatePayload(7, 5, IntervalStats(7, 1, 5, 4, 0.0, None, None, 0, 4, None), []),
    ExamplePayload(1, 1, []),
    ExamplePayload(4096, 10**9, [HardExample(2**63 - 1, -1.7e308, 10**9, 4096, "ünïcødé ✓", "", 2**31 - 1,
                                             np.zeros((1, 1, 3), np.uint8))]),
]
PAYLOADS = st.sampled_from(BASE_PAYLOADS)


# All of the above, for a gather's hostile host.
HOSTILE_ENCODERS = st.one_of(RANDOM_BYTES, MUTATIONS, at_any_place(DEEP_VALUES), at_any_place(OVERSIZED_VALUES),
                             ANY_VALUE_ANYWHERE)


@hostile(3000)
@given(data=st.binary(max_size=2000))
def test_random_bytes_only_raise_payload_error(data):
    for kind in (CandidatePayload, ExamplePayload):
        decode_or_refuse(data, kind)


@hostile(2000)
@given(payload=PAYLOADS, encode=MUTATIONS)
def test_truncated_and_mutated_payloads_only_raise_payload_error(payload, encode):
    decode_or_refuse(encode(payload), type(payload))


@hostile(1000)
@given(payload=PAYLOADS, encode=at_any_place(DEEP_VALUES))
def test_deep_nesting_anywhere_only_raises_payload_error(payload, encode):
    assert decode_or_refuse(encode(payload), type(payload)) is None


@hostile(800)
@given(payload=PAYLOADS, encode=at_any_place(OVERSIZED_VALUES))
def test_oversized_strings_arrays_and_headers_only_raise_payload_error(payload, encode):
    decode_or_refuse(encode(payload), type(payload))


@hostile(2200)
@given(payload=PAYLOADS, encode=ANY_VALUE_ANYWHERE)
def test_any_value_at_any_field_only_raises_payload_error(payload, encode):
    decode_or_refuse(encode(payload), type(payload))


@hostile(1000)
@given(payload=st.sampled_from([p for p in BASE_PAYLOADS if getattr(p, "candidates", None)]), raw=FLOAT_BITS,
       which=WHICH)
def test_a_loss_of_any_float_bits_decodes_exactly_or_is_refused_as_non_finite(payload, raw, which):
    """float64 or float32 on the wire: a finite value arrives bit for bit, any inf or NaN
    (signed, signalling, with a payload) is refused by name."""
    entry = which % len(payload.candidates)
    data = splice(wire_of(payload), ("candidates", "loss", entry), raw)
    value = struct.unpack(">d" if raw[0] == 0xCB else ">f", raw[1:])[0]
    if math.isfinite(value):
        decoded = decode_or_refuse(data, CandidatePayload)
        assert struct.pack(">d", decoded.candidates[entry].loss) == struct.pack(">d", value)
    else:
        message = rf"^payload: candidates: entry {entry}: field 'loss' must be finite, got (nan|inf|-inf)$"
        with pytest.raises(PayloadError, match=message):
            decode_payload(data, CandidatePayload)


def test_1000_levels_of_nesting_are_a_payload_error():
    data = (b"\x81" + msgpack.packb("version")) * 1000 + b"\x01"
    with pytest.raises(PayloadError) as error:
        decode_payload(data, CandidatePayload)
    assert str(error.value) == (
        "payload: version {'version': {'version': {'version': {...}}}} is not the supported version 1")
    with pytest.raises(PayloadError) as error:
        decode_payload(b"\x91" * 1025 + b"\x01", CandidatePayload)
    assert str(error.value) == "payload: not a valid msgpack payload (StackError)"


def test_a_16_8_mb_value_gets_a_short_message():
    quoted = "b'" + "x" * 16 + "..." + "x" * 18 + "'"
    data = msgpack.packb({"version": b"x" * 16_800_000})
    assert len(data) > 16_800_000
    with pytest.raises(PayloadError) as error:
        decode_payload(data, CandidatePayload)
    assert str(error.value) == f"payload: version {quoted} is not the supported version 1"

    wire = wire_of(small_candidates())
    with pytest.raises(PayloadError) as error:
        decode_payload(msgpack.packb({**wire, b"x" * 16_800_000: 1}), CandidatePayload)
    assert str(error.value) == f"payload: top level: unknown keys [{quoted}]"

    key = msgpack.packb(b"x" * 8_000_000)
    with pytest.raises(PayloadError) as error:
        decode_payload(b"\x82" + key + b"\x01" + key + b"\x02", CandidatePayload)
    assert str(error.value) == f"payload: a map repeats the keys {quoted}"


@pytest.mark.parametrize("error", [RecursionError, MemoryError])
def test_running_out_of_stack_or_memory_while_unpacking_is_a_payload_error(monkeypatch, error):
    def unpack_runs_out(*args, **kwargs):
        raise error("out")

    monkeypatch.setattr(msgpack, "unpackb", unpack_runs_out)
    with pytest.raises(PayloadError) as raised:
        decode_payload(encode_payload(small_candidates()), CandidatePayload, source="payload from host 1")
    assert str(raised.value) == f"payload from host 1: too deep or too large to unpack ({error.__name__})"


def test_messages_are_cut_at_the_limit():
    assert str(PayloadError("x" * 1000)) == "x" * (MAX_MESSAGE_CHARS - 3) + "..."
    assert str(PayloadError("x" * MAX_MESSAGE_CHARS)) == "x" * MAX_MESSAGE_CHARS


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
