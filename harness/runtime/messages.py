"""Messages from another host or from a checkpoint: one way to state what they may hold,
and one way to read them. Never pickle.

A message is a frozen msgspec Struct. Its annotations are the schema and the limits,
built from the types here: `Natural` (an int in [0, 2**63)), `Finite` (a float that is
neither inf nor NaN), `natural(limit)`, `text(n)`, `binary(n)`, `array(item, n)` and
`mapping(value, n, key_chars)`. Every string, bin, array and map has a maximum length,
every int both bounds, and no field is `Any` (tests/test_messages.py reads every schema
in the tree to hold that). What must hang together across fields goes in the Struct's
`__post_init__`, which raises ValueError saying what is wrong; msgspec adds where, for a
part of a message (`- at $.stats`).

On the wire a message is the msgpack array `[VERSION, tag, body]`, the body a map of
the Struct's fields. One version for every message: the hosts of one launch run one
podharness (the preflight compares their code); a change to any message bumps it.

`decode` treats the bytes as hostile. The size is checked against `max_bytes` before
anything else; msgspec then reads the frame, checks the version and the tag, and decodes
the body straight into the Struct. A length a header announces is checked against the
bytes left before anything is allocated, an array or map longer than its limit is
refused from its header, before any of its items is read, and a string or bin longer
than its limit is refused as soon as it is read (never more than the message's own
size). The schema bounds the depth: a value nested where a number belongs is refused at
its first level, and skipping a body to read the frame stops at Python's recursion
limit. Every failure is a `MessageError` that names the source and the place
(`$.candidates.loss[1]`) in at most `MAX_MESSAGE_CHARS`. `encode` decodes what it wrote,
so a host cannot send what the others would refuse.

Two things msgspec does its own way: an int is taken where a float is declared (it
must still be in range), and a map that repeats a key keeps the last value, which is
checked like any other. `convert` applies the same schemas to a value already parsed
from JSON (a checkpoint's metadata).

Tests: `.venv/bin/python -m pytest -q tests/test_messages.py tests/test_codec.py`.
"""

import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec

VERSION = 3
MAX_MESSAGE_CHARS = 500
MAX_TAG_CHARS = 64
MAX_INT = 2**63 - 1

Natural = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
# msgspec says "Expected `float` >= -1.79...e+308" of a NaN or -inf: say what it means.
_NOT_FINITE = (f"`float` >= {-sys.float_info.max!r}", f"`float` <= {sys.float_info.max!r}")

_Frame = tuple[int, Annotated[str, msgspec.Meta(max_length=MAX_TAG_CHARS)], msgspec.Raw]
_ENCODER = msgspec.msgpack.Encoder()


def natural(limit: int, *, least: int = 0) -> Any:
    """An int in [least, limit]."""
    return Annotated[int, msgspec.Meta(ge=least, le=limit)]


def text(limit: int) -> Any:
    """A string of at most `limit` characters."""
    return Annotated[str, msgspec.Meta(max_length=limit)]


def binary(limit: int) -> Any:
    """A bin of at most `limit` bytes."""
    return Annotated[bytes, msgspec.Meta(max_length=limit)]


def array(item: Any, limit: int) -> Any:
    """A tuple of at most `limit` items."""
    return Annotated[tuple[item, ...], msgspec.Meta(max_length=limit)]


def mapping(value: Any, limit: int, key_chars: int) -> Any:
    """A map of at most `limit` entries, with string keys of at most `key_chars` characters."""
    return Annotated[dict[text(key_chars), value], msgspec.Meta(max_length=limit)]


class MessageError(ValueError):
    """A message that can't be encoded or decoded; the message says where and why, in at
    most `MAX_MESSAGE_CHARS` characters (it ends up in every host's log)."""

    def __init__(self, message: str):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)


class Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A part of a message: exactly its fields, each of its type."""


class Message(Record):
    """A whole message; `tag` names its kind on the wire."""

    tag: ClassVar[str]


M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Record)


def encode(kind: type[M], body: M | Mapping[str, Any], *, source: str) -> bytes:
    """A `kind` message's bytes from the Struct or a map of its fields, after the checks
    a receiver makes (`source` starts the error)."""
    try:
        data = _ENCODER.encode((VERSION, kind.tag, body))
    except (TypeError, ValueError, OverflowError) as err:  # numpy scalars, ints past 2**64, ...
        raise MessageError(f"{source}: {err}") from err
    decode(data, kind, source=source, max_bytes=len(data))
    return data


def decode(data: Any, kind: type[M], *, source: str, max_bytes: int) -> M:
    """Untrusted bytes -> a message of `kind`, or `MessageError` starting with `source`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"{source}: expected bytes, got {type(data).__name__}")
    size = memoryview(data).nbytes
    if size == 0:
        raise MessageError(f"{source}: empty message")
    if size > max_bytes:
        raise MessageError(f"{source}: {size} bytes is over the limit of {max_bytes}")
    version, tag, body = _read(msgspec.msgpack.decode, data, _Frame, source, "not a [version, kind, body] frame: ")
    if version != VERSION:
        raise MessageError(f"{source}: version {version} is not the supported version {VERSION}")
    if tag != kind.tag:
        raise MessageError(f"{source}: a message of kind {tag!r}, expected {kind.tag!r}")
    return _read(msgspec.msgpack.decode, body, kind, source)


def convert(value: Any, kind: type[R], *, source: str) -> R:
    """A value parsed from JSON (a checkpoint's metadata) -> a `kind`, or `MessageError`."""
    return _read(msgspec.convert, value, kind, source)


def _read(read: Callable[..., Any], data: Any, kind: Any, source: str, invalid: str = "") -> Any:
    """`read(data, type=kind, strict=True)` with every failure made a MessageError;
    `invalid` starts what is said of a value that does not fit `kind`."""
    try:
        return read(data, type=kind, strict=True)
    except msgspec.ValidationError as err:
        message = str(err)
        for words in _NOT_FINITE:
            message = message.replace(words, "a finite `float`")
        raise MessageError(f"{source}: {invalid}{message}") from err
    except msgspec.DecodeError as err:
        raise MessageError(f"{source}: not valid msgpack ({err})") from err
    except (RecursionError, MemoryError) as err:
        # The bytes decide how deep and how big things get: running out of either is a
        # bad message, to be skipped like any other, not a crash.
        raise MessageError(f"{source}: too deep or too large to read ({type(err).__name__})") from err
