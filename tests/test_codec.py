"""The hard-example payload codec: round trips, hostile bytes, exact error messages, sizes.

The hostile-input properties (10,000 generated inputs) hold decode_payload to its
contract: a payload or a MessageError with a short message, and nothing else, for random
bytes, truncated and mutated payloads, deep nesting, oversized strings and arrays, any
float bit pattern and any msgpack value at any field (the tampers of
tests/support/hostile.py, which tests/test_gather_hostile.py sends from a simulated host).

Run: .venv/bin/python -m pytest -q tests/test_codec.py
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.hard_examples.codec import CandidatePayload, ExamplePayload, decode_payload, encode_payload
from harness.hard_examples.entry import Candidate, HardExample, IntervalStats
from harness.runtime.messages import MAX_MESSAGE_CHARS, VERSION, MessageError
from tests.support.hostile import (ANY_FINITE, ANY_VALUE_ANYWHERE, DEEP_VALUES, DELETE, FLOAT_BITS, MUTATIONS,
                                   OVERSIZED_VALUES, WHICH, at_any_place, hostile, set_path, splice)
from tests.support.runs import REPO_ROOT

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOSS = st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, -0.0, 1.0, 4.0])
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
        with pytest.raises(MessageError):
            decode_payload(data[:cut], type(payload))
    with pytest.raises(MessageError, match=r"^payload: not valid msgpack \(.*trailing characters"):
        decode_payload(data + b"\x00", type(payload))


# ---------------------------------------------------------------------------------------
# Hostile bytes: what tests/support/hostile.py's tampers make of an honest payload.

def decode_or_refuse(data: bytes, kind: type) -> CandidatePayload | ExamplePayload | None:
    """decode_payload's whole contract on hostile bytes: a payload that encodes back to
    itself, or a MessageError naming the source in at most MAX_MESSAGE_CHARS; any other
    exception fails the test."""
    try:
        decoded = decode_payload(data, kind, source="payload from host 3")
    except MessageError as err:
        message = str(err)
        assert message.startswith("payload from host 3: ") and len(message) <= MAX_MESSAGE_CHARS, message
        return None
    assert decode_payload(encode_payload(decoded), kind) == decoded
    return decoded


def body_of(payload: CandidatePayload | ExamplePayload) -> dict:
    """The payload's fields as msgpack (an independent decoder) reads them."""
    version, tag, body = msgpack.unpackb(encode_payload(payload))
    assert (version, tag) == (VERSION, "candidates" if isinstance(payload, CandidatePayload) else "examples")
    return body


def framed(payload: CandidatePayload | ExamplePayload, body) -> bytes:
    return msgpack.packb([VERSION, msgpack.unpackb(encode_payload(payload))[1], body])


# The payloads the tampers start from: fixed, since drawing a payload costs far more
# than decoding one, and the tampers draw the hostile part. test_round_trip covers drawn
# payloads.
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
HONEST = st.sampled_from([(encode_payload(p), type(p)) for p in BASE_PAYLOADS])


@hostile(3000)
@given(data=st.binary(max_size=2000))
def test_random_bytes_only_raise_message_error(data):
    for kind in (CandidatePayload, ExamplePayload):
        decode_or_refuse(data, kind)


@hostile(2000)
@given(honest=HONEST, tamper=MUTATIONS)
def test_truncated_and_mutated_payloads_only_raise_message_error(honest, tamper):
    decode_or_refuse(tamper(honest[0]), honest[1])


@hostile(1000)
@given(honest=HONEST, tamper=at_any_place(DEEP_VALUES))
def test_deep_nesting_anywhere_only_raises_message_error(honest, tamper):
    assert decode_or_refuse(tamper(honest[0]), honest[1]) is None


@hostile(800)
@given(honest=HONEST, tamper=at_any_place(OVERSIZED_VALUES))
def test_oversized_strings_arrays_and_headers_only_raise_message_error(honest, tamper):
    decode_or_refuse(tamper(honest[0]), honest[1])


@hostile(2200)
@given(honest=HONEST, tamper=ANY_VALUE_ANYWHERE)
def test_any_value_at_any_field_only_raises_message_error(honest, tamper):
    decode_or_refuse(tamper(honest[0]), honest[1])


@hostile(1000)
@given(payload=st.sampled_from([p for p in BASE_PAYLOADS if getattr(p, "candidates", None)]), raw=FLOAT_BITS,
       which=WHICH)
def test_a_loss_of_any_float_bits_decodes_exactly_or_is_refused_as_non_finite(payload, raw, which):
    """float64 or float32 on the wire: a finite value arrives bit for bit, any inf or NaN
    (signed, signalling, with a payload) is refused by name."""
    entry = which % len(payload.candidates)
    data = splice(msgpack.unpackb(encode_payload(payload)), (2, "candidates", "loss", entry), raw)
    value = struct.unpack(">d" if raw[0] == 0xCB else ">f", raw[1:])[0]
    if math.isfinite(value):
        decoded = decode_or_refuse(data, CandidatePayload)
        assert struct.pack(">d", decoded.candidates[entry].loss) == struct.pack(">d", value)
    else:
        message = rf"^payload: Expected a finite `float` - at `\$\.candidates\.loss\[{entry}\]`$"
        with pytest.raises(MessageError, match=message):
            decode_payload(data, CandidatePayload)


def test_deep_nesting_is_refused_at_the_recursion_limit_or_at_its_first_level():
    """Reading the frame skips over the body, which stops at Python's recursion limit
    (1000); less deep, a value nested where a number belongs is refused at its first level."""
    body = body_of(small_candidates())
    for depth, message in [(100_000, "too deep or too large to read (RecursionError)"),
                           (500, "Expected `int`, got `array` - at `$.host`")]:
        data = splice([VERSION, "candidates", body], (2, "host"), b"\x91" * depth + b"\x01")
        with pytest.raises(MessageError) as error:
            decode_payload(data, CandidatePayload)
        assert str(error.value) == f"payload: {message}"
    with pytest.raises(MessageError) as error:
        decode_payload((b"\x81" + msgpack.packb("version")) * 1000 + b"\x01", CandidatePayload)
    assert str(error.value) == "payload: not a [version, kind, body] frame: Expected `array`, got `object`"


def test_a_16_8_mb_value_gets_a_short_message():
    huge = b"x" * 16_800_000
    with pytest.raises(MessageError) as error:
        decode_payload(msgpack.packb([huge, "candidates", {}]), CandidatePayload)
    assert str(error.value) == "payload: not a [version, kind, body] frame: Expected `int`, got `bytes` - at `$[0]`"
    with pytest.raises(MessageError) as error:
        decode_payload(framed(small_candidates(), {**body_of(small_candidates()), huge.decode(): 1}), CandidatePayload)
    message = str(error.value)
    assert message.startswith("payload: Object contains unknown field `xxx") and len(message) == MAX_MESSAGE_CHARS
    with pytest.raises(MessageError) as error:
        decode_payload(framed(small_examples(), set_path(body_of(small_examples()), ("examples", 0, "prompt"),
                                                         "x" * 16_800_000)), ExamplePayload)
    assert str(error.value) == "payload: Expected `str` of length <= 4096 - at `$.examples[0].prompt`"


def test_running_out_of_memory_while_reading_is_a_message_error():
    """A 63 MB image (under the 64 MB limit) in a process whose address space is capped
    (as a container's memory limit would) at 32 MB more than it holds once it has read
    the bytes."""
    script = (
        "import os, resource, sys\n"
        "from harness.hard_examples.codec import ExamplePayload, decode_payload\n"
        "data = sys.stdin.buffer.read()\n"
        "held = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
        "resource.setrlimit(resource.RLIMIT_AS, (held + (32 << 20), resource.RLIM_INFINITY))\n"
        "decode_payload(data, ExamplePayload, source='payload from host 1', max_bytes=1 << 30)\n")
    image = {"bytes": bytes(4096 * 5120 * 3), "shape": [4096, 5120, 3], "dtype": "uint8"}
    example = {**body_of(small_examples())["examples"][0], "image": image}
    data = framed(small_examples(), {**body_of(small_examples()), "examples": [example]})
    result = subprocess.run([sys.executable, "-c", script], input=data, cwd=REPO_ROOT, capture_output=True,
                            timeout=120)
    assert result.stderr.decode().strip().splitlines()[-1] == (
        "harness.runtime.messages.MessageError: payload from host 1: too deep or too large to read (MemoryError)")


def test_messages_are_cut_at_the_limit():
    assert str(MessageError("x" * 1000)) == "x" * (MAX_MESSAGE_CHARS - 3) + "..."
    assert str(MessageError("x" * MAX_MESSAGE_CHARS)) == "x" * MAX_MESSAGE_CHARS


def test_oversize_is_refused_before_reading(monkeypatch):
    def decode_must_not_run(*args, **kwargs):
        raise AssertionError("msgspec decoded an oversize payload")

    data = encode_payload(small_examples())
    monkeypatch.setattr(msgspec.msgpack, "decode", decode_must_not_run)
    with pytest.raises(MessageError, match=rf"^payload from host 3: {len(data)} bytes is over the limit of 100$"):
        decode_payload(data, ExamplePayload, source="payload from host 3", max_bytes=100)


def test_empty_bytes_and_non_bytes_are_errors():
    with pytest.raises(MessageError, match="^payload from host 5: empty message$"):
        decode_payload(b"", CandidatePayload, source="payload from host 5")
    with pytest.raises(MessageError, match="^payload: expected bytes, got str$"):
        decode_payload("hello", CandidatePayload)


def test_too_many_entries_are_refused():
    data = encode_payload(small_candidates())
    with pytest.raises(MessageError, match="^payload: 2 candidates, over the limit of 1$"):
        decode_payload(data, CandidatePayload, max_entries=1)
    data = encode_payload(small_examples())
    with pytest.raises(MessageError, match="^payload: 2 examples, over the limit of 1$"):
        decode_payload(data, ExamplePayload, max_entries=1)
    body = body_of(small_candidates())
    data = framed(small_candidates(), {**body, "candidates": {**body["candidates"], "sample_id": [0] * 65537}})
    with pytest.raises(MessageError, match=r"^payload: Expected `array` of length <= 65536 - at "
                                           r"`\$\.candidates\.sample_id`$"):
        decode_payload(data, CandidatePayload)


def test_version_and_kind_mismatch():
    body = body_of(small_candidates())
    with pytest.raises(MessageError, match=f"^payload: version 2 is not the supported version {VERSION}$"):
        decode_payload(msgpack.packb([2, "candidates", body]), CandidatePayload)
    with pytest.raises(MessageError, match=r"^payload: not a \[version, kind, body\] frame: Expected `int`, got "
                                           r"`bool` - at `\$\[0\]`$"):
        decode_payload(msgpack.packb([True, "candidates", body]), CandidatePayload)
    with pytest.raises(MessageError, match=r"^payload: not a \[version, kind, body\] frame: Expected `array` of "
                                           r"length 3, got 2$"):
        decode_payload(msgpack.packb([VERSION, "candidates"]), CandidatePayload)
    with pytest.raises(MessageError, match="^payload: a message of kind 'candidates', expected 'examples'$"):
        decode_payload(encode_payload(small_candidates()), ExamplePayload)


def test_a_repeated_key_keeps_the_last_value_which_is_checked():
    packer = msgpack.Packer()
    body = body_of(small_candidates())
    frame = packer.pack_array_header(3) + packer.pack(VERSION) + packer.pack("candidates")

    def repeating(pairs: list[tuple]) -> bytes:
        return frame + packer.pack_map_header(len(pairs)) + b"".join(packer.pack(k) + packer.pack(v) for k, v in pairs)

    assert decode_payload(repeating([("host", 4), *body.items()]), CandidatePayload) == small_candidates()
    with pytest.raises(MessageError, match=r"^payload: Expected `int` >= 0 - at `\$\.host`$"):
        decode_payload(repeating([*body.items(), ("host", -1)]), CandidatePayload)


CANDIDATE_CASES = [
    (("host",), "3", "Expected `int`, got `str` - at `$.host`"),
    (("host",), True, "Expected `int`, got `bool` - at `$.host`"),
    (("host",), -1, "Expected `int` >= 0 - at `$.host`"),
    (("step",), 2.0, "Expected `int`, got `float` - at `$.step`"),
    (("stats", "loss_sum"), "1", "Expected `float`, got `str` - at `$.stats.loss_sum`"),
    (("stats", "loss_sum"), math.inf, "Expected a finite `float` - at `$.stats.loss_sum`"),
    (("stats", "loss_max"), "9", "Expected `float | null`, got `str` - at `$.stats.loss_max`"),
    (("stats", "first_step"), [], "Expected `int | null`, got `array` - at `$.stats.first_step`"),
    (('stats', 'num_nonfinite'), 161, "161 non-finite and 12 high losses don't fit 160 samples - at `$.stats`"),
    (('stats', 'num_high_loss'), 160, "1 non-finite and 160 high losses don't fit 160 samples - at `$.stats`"),
    (('stats', 'last_step'), 21, "stats: last_step 21 is after the payload's step 20"),
    (('stats', 'last_step'), 9, "steps 10..9 don't fit 160 samples - at `$.stats`"),
    (('stats', 'first_step'), None, "steps None..19 don't fit 160 samples - at `$.stats`"),
    (("stats", "loss_min"), None, "loss_max and loss_min must be set exactly when there are finite losses; "
                                  "159 finite, got 9.25, None - at `$.stats`"),
    (("stats", "loss_min"), 9.5, "loss_min 9.5 is above loss_max 9.25 - at `$.stats`"),
    (("stats", "extra"), 1, "Object contains unknown field `extra` - at `$.stats`"),
    (("stats", "threshold"), DELETE, "Object missing required field `threshold` - at `$.stats`"),
    (("stats",), [], "Expected `object`, got `array` - at `$.stats`"),
    (("candidates", "loss", 1), "6", "Expected `float`, got `str` - at `$.candidates.loss[1]`"),
    (("candidates", "loss", 0), math.nan, "Expected a finite `float` - at `$.candidates.loss[0]`"),
    (("candidates", "sample_id", 1), False, "Expected `int`, got `bool` - at `$.candidates.sample_id[1]`"),
    (("candidates", "sample_id", 1), -7, "Expected `int` >= 0 - at `$.candidates.sample_id[1]`"),
    (("candidates", "sample_id", 1), 2**63, "Expected `int` <= 9223372036854775807 - at `$.candidates.sample_id[1]`"),
    (("candidates", "sample_id", 1), 31, "sample_id 31 appears twice - at `$.candidates`"),
    (('candidates', 'step', 0), 21, "a candidate's step 21 is after the payload's step 20"),
    (("candidates", "step"), [12], "columns of different lengths: 2 sample_id, 2 loss, 1 step - at `$.candidates`"),
    (("candidates", "step"), {}, "Expected `array`, got `object` - at `$.candidates.step`"),
    (("candidates", "host"), [3, 3], "Object contains unknown field `host` - at `$.candidates`"),
    (("examples",), [], "Object contains unknown field `examples`"),
]
EXAMPLE_CASES = [
    (("examples", 1, "loss"), "6.0", "Expected `float`, got `str` - at `$.examples[1].loss`"),
    (("examples", 0, "lang_action"), b"move", "Expected `str`, got `bytes` - at `$.examples[0].lang_action`"),
    (("examples", 0, "prompt"), "x" * 4097, "Expected `str` of length <= 4096 - at `$.examples[0].prompt`"),
    (("examples", 1, "token_len"), -1, "Expected `int` >= 0 - at `$.examples[1].token_len`"),
    (("examples", 1, "sample_id"), 31, "examples: sample_id 31 appears twice"),
    (('examples', 0, 'step'), 99, "an example's step 99 is after the payload's step 20"),
    (("examples", 0, "image", "dtype"), "float32", "Invalid enum value 'float32' - at `$.examples[0].image.dtype`"),
    (("examples", 0, "image", "shape"), [2, 4], "Expected `array` of length 3, got 2 - at `$.examples[0].image.shape`"),
    (("examples", 0, "image", "shape"), [4, 4, 3],
     "24 bytes don't fill an image of shape [4, 4, 3] - at `$.examples[0].image`"),
    (("examples", 0, "image", "shape"), [2, 2, 6], "Invalid enum value 6 - at `$.examples[0].image.shape[2]`"),
    (("examples", 0, "image", "shape"), [0, 4, 3], "Expected `int` >= 1 - at `$.examples[0].image.shape[0]`"),
    (("examples", 0, "image", "shape", 0), 2.0, "Expected `int`, got `float` - at `$.examples[0].image.shape[0]`"),
    (("examples", 0, "image", "bytes"), "abc", "Expected `bytes`, got `str` - at `$.examples[0].image.bytes`"),
    (("examples", 0, "image", "bytes"), b"abc", "3 bytes don't fill an image of shape [2, 4, 3] - at "
                                                "`$.examples[0].image`"),
    (("examples", 0, "image"), None, "Expected `object`, got `None` - at `$.examples[0].image`"),
    (("examples", 0, "host"), 3, "Object contains unknown field `host` - at `$.examples[0]`"),
    (("examples", 1), [], "Expected `object`, got `array` - at `$.examples[1]`"),
    (("examples",), {}, "Expected `array`, got `object` - at `$.examples`"),
]


def test_an_int_where_a_float_belongs_is_taken_as_that_float():
    data = framed(small_candidates(), set_path(body_of(small_candidates()), ("candidates", "loss", 1), 6))
    assert decode_payload(data, CandidatePayload) == small_candidates()  # its loss is 6.0


def assert_refused(payload, path, value, message):
    data = framed(payload, set_path(body_of(payload), path, value))
    with pytest.raises(MessageError) as error:
        decode_payload(data, type(payload), source="payload from host 3")
    assert str(error.value) == f"payload from host 3: {message}"


@pytest.mark.parametrize("path, value, message", CANDIDATE_CASES)
def test_bad_candidate_fields_are_named(path, value, message):
    assert_refused(small_candidates(), path, value, message)


@pytest.mark.parametrize("path, value, message", EXAMPLE_CASES)
def test_bad_example_fields_are_named(path, value, message):
    assert_refused(small_examples(), path, value, message)


def test_encode_checks_what_receivers_check():
    where = "encoding the payload of host"
    empty = IntervalStats(0, None, None, 0, 0.0, None, None, 0, 0, None)
    with pytest.raises(MessageError, match=f"^{where} 0: Encoding objects of type numpy.float32 is unsupported$"):
        encode_payload(CandidatePayload(0, 5, empty, [Candidate(1, np.float32(2.0), 1, 0)]))
    with pytest.raises(MessageError, match=rf"^{where} 0: Expected a finite `float` - at `\$\.candidates\.loss\[0\]`$"):
        encode_payload(CandidatePayload(0, 5, empty, [Candidate(1, math.inf, 1, 0)]))
    with pytest.raises(MessageError, match=rf"^{where} 3: its entries come from hosts \[4\], not from host 3$"):
        encode_payload(CandidatePayload(3, 20, small_candidates().stats, [Candidate(1, 2.0, 1, 4)]))
    with pytest.raises(MessageError, match=rf"^{where} 2: its entries come from hosts \[3\], not from host 2$"):
        encode_payload(CandidatePayload(2, 20, small_candidates().stats, []))
    example = small_examples().examples[0]
    bad_image = HardExample(1, 2.0, 3, 3, "a", "b", 1, example.image.astype(np.float32))
    with pytest.raises(MessageError, match=rf"^{where} 3: Invalid enum value 'float32' - at "
                                           r"`\$\.examples\[0\]\.image\.dtype`$"):
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
