"""What a broken or malicious host sends in place of an honest message, as hypothesis
strategies of `Tamper`s: functions from the honest message's bytes to the bytes sent
instead (partials, so a failing example prints what was done). The honest bytes are
unpacked with the msgpack package, an implementation independent of the msgspec decoder
under test, and every tamper works on any message of harness/runtime/messages.py.

Used by tests/test_codec.py, tests/test_gather_hostile.py, tests/test_preflight_units.py
and tests/test_messages.py.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterator
from functools import partial

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

Tamper = Callable[[bytes], bytes]
PLACEHOLDER = b"\xffplaceholder for hostile bytes\xff"
DELETE = object()


def hostile(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))


EXTREME_FLOATS = [sys.float_info.max, -sys.float_info.max, 1.7e308, -1.7e308, 5e-324, -5e-324,
                  sys.float_info.min, 1e30, -1e30, 0.0, -0.0]
# Finite, any exponent: hypothesis's floats() already favours subnormals and the extremes.
ANY_FINITE = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(EXTREME_FLOATS)
# Infinities and NaNs of either sign, quiet and signalling, with payloads.
NONFINITE_BITS = [0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0xFFF8000000000000,
                  0x7FF0000000000001, 0x7FF4000000000000, 0xFFFFFFFFFFFFFFFF]
NONFINITE_FLOAT32_BITS = [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF]


def places(wire, path: tuple = ()) -> Iterator[tuple[tuple, object]]:
    """(path, value) for every place in an unpacked message: the top, each map value,
    each array element."""
    yield path, wire
    children = wire.items() if isinstance(wire, dict) else enumerate(wire) if isinstance(wire, list) else ()
    for key, child in children:
        yield from places(child, (*path, key))


def set_path(wire, path: tuple, value):
    """A copy of `wire` with the value at `path` (keys and list indices) replaced; the
    sentinel DELETE removes it."""
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


def splice(wire, path: tuple, raw: bytes) -> bytes:
    """`wire` packed with the msgpack bytes `raw`, taken as they are, as the value at `path`."""
    marker = msgpack.packb(PLACEHOLDER)
    data = msgpack.packb(set_path(wire, path, PLACEHOLDER))
    assert data.count(marker) == 1
    return data.replace(marker, raw)


def send_bytes(honest: bytes, *, data: bytes) -> bytes:
    return data


def splice_at(honest: bytes, *, raw: bytes, which: int) -> bytes:
    """The message with `raw` at its place number `which` (modulo the number of places)."""
    wire = msgpack.unpackb(honest)
    paths = [path for path, _ in places(wire)]
    return splice(wire, paths[which % len(paths)], raw)


def delete_at(honest: bytes, *, which: int) -> bytes:
    """The message without one of its places below the top."""
    wire = msgpack.unpackb(honest)
    paths = [path for path, _ in places(wire)][1:]
    return msgpack.packb(set_path(wire, paths[which % len(paths)], DELETE))


def add_key_at(honest: bytes, *, which: int, key: str | bytes, value) -> bytes:
    """The message with `key: value` added to one of its maps."""
    wire = msgpack.unpackb(honest)
    maps = [path for path, value in places(wire) if isinstance(value, dict)]
    return msgpack.packb(set_path(wire, (*maps[which % len(maps)], key), value))


def mutate(honest: bytes, *, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    """The message's bytes, edited: cut, a byte changed, bytes inserted, deleted or repeated."""
    data = bytearray(honest)
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


def at_any_place(raw_values: st.SearchStrategy[bytes]) -> st.SearchStrategy[Tamper]:
    return st.builds(partial, st.just(splice_at), raw=raw_values, which=st.integers(0, 2**16))


RANDOM_BYTES = st.builds(partial, st.just(send_bytes), data=st.binary(max_size=2000))
MUTATIONS = st.builds(partial, st.just(mutate), edits=st.lists(st.tuples(
    st.sampled_from(["truncate", "change", "insert", "delete", "repeat"]),
    st.integers(0, 2**20), st.integers(1, 255), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
# A map or array nested up to 3000 deep (Python's recursion limit is 1000), in any of its encodings.
NEST_LEVELS = [b"\x91", b"\xdc\x00\x01", b"\xdd\x00\x00\x00\x01", b"\x81\xa0", b"\x81\xa7version",
               b"\x92\xc0", b"\x82\xa1a\x01\xa1b"]
DEEP_VALUES = st.builds(
    lambda level, depth, inner: level * depth + inner,
    st.sampled_from(NEST_LEVELS),
    st.integers(2, 3000) | st.sampled_from([999, 1000, 1023, 1024, 1025]),
    st.sampled_from([b"\x01", b"\xc0", msgpack.packb(1.7e308), msgpack.packb("x" * 100), b""]),
)
BIG_KEYS = st.sampled_from(["x" * 16384, b"k" * 50_000])  # a long str; a long bin
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
    st.builds(lambda n: msgpack.packb({f"k{i}": i for i in range(n)}), st.integers(12, 80)),
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
# All of the above.
TAMPERS = st.one_of(RANDOM_BYTES, MUTATIONS, at_any_place(DEEP_VALUES), at_any_place(OVERSIZED_VALUES),
                    ANY_VALUE_ANYWHERE)
