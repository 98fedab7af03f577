"""harness/runtime/messages.py: every schema in the tree states a limit for everything
that grows, the frame, and the roll call's messages against hostile bytes.

    .venv/bin/python -m pytest -q tests/test_messages.py
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.hard_examples.codec import decode_payload, encode_payload
from harness.preflight.wire import (MAX_KEY_CHARS, Hello, Reply, decode_hello, decode_reply, decode_report,
                                    encode_hello, encode_reply, encode_report)
from harness.runtime import messages
from harness.runtime.messages import MAX_MESSAGE_CHARS, VERSION, Message, MessageError, Record
from tests.support.hostile import TAMPERS, Tamper, hostile
from tests.support.runs import REPO_ROOT

SCHEMA_CLASS = re.compile(r"^class (\w+)\((?:Record|Message)\):", re.MULTILINE)


def schemas_in_the_tree() -> dict[str, type]:
    """Every Record and Message class defined in harness/ and launch/, found by reading
    the sources (so a new module's schemas are checked without being listed here)."""
    found = {}
    for path in sorted([*(REPO_ROOT / "harness").rglob("*.py"), *(REPO_ROOT / "launch").rglob("*.py")]):
        names = SCHEMA_CLASS.findall(path.read_text())
        if names and path != REPO_ROOT / "harness" / "runtime" / "messages.py":  # the bases themselves
            module = importlib.import_module(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
            found.update({f"{module.__name__}.{name}": getattr(module, name) for name in names})
    return found


def unbounded(info: msgspec.inspect.Type, where: str) -> list[str]:
    """The places in a schema that could grow or hold any value: a string, bin, array or
    map without a maximum length, an int without both bounds, a float that may be
    infinite or NaN, or a field of any type."""
    kind = type(info).__name__
    if isinstance(info, msgspec.inspect.StructType):
        return [p for field in info.fields for p in unbounded(field.type, f"{where}.{field.name}")]
    if isinstance(info, msgspec.inspect.UnionType):
        return [p for member in info.types for p in unbounded(member, where)]
    if isinstance(info, msgspec.inspect.TupleType):
        return [p for i, item in enumerate(info.item_types) for p in unbounded(item, f"{where}[{i}]")]
    if isinstance(info, (msgspec.inspect.LiteralType, msgspec.inspect.NoneType)):
        return []
    if isinstance(info, msgspec.inspect.IntType):
        return [] if info.ge is not None and info.le is not None else [f"{where}: {kind} without bounds"]
    if isinstance(info, msgspec.inspect.FloatType):
        finite = (info.ge, info.le) == (-sys.float_info.max, sys.float_info.max)
        return [] if finite else [f"{where}: {kind} that may be inf or NaN"]
    own = [] if getattr(info, "max_length", None) is not None else [f"{where}: {kind} without max_length"]
    if isinstance(info, (msgspec.inspect.StrType, msgspec.inspect.BytesType)):
        return own
    if isinstance(info, (msgspec.inspect.VarTupleType, msgspec.inspect.ListType)):
        return own + unbounded(info.item_type, f"{where}[]")
    if isinstance(info, msgspec.inspect.DictType):
        return own + unbounded(info.key_type, f"{where} key") + unbounded(info.value_type, f"{where}[]")
    return [f"{where}: {kind} is not allowed in a message"]


def test_every_schema_in_the_tree_bounds_everything_that_grows():
    schemas = schemas_in_the_tree()
    assert {"harness.hard_examples.codec.CandidateMessage", "harness.hard_examples.codec.ExampleMessage",
            "harness.preflight.wire.Report", "harness.preflight.wire.Hello", "harness.preflight.wire.Reply",
            "harness.hard_examples.reporter.SavedState"} <= set(schemas)
    problems = [p for name, cls in schemas.items() for p in unbounded(msgspec.inspect.type_info(cls), name)]
    assert problems == []
    assert all(cls.__struct_config__.forbid_unknown_fields and cls.__struct_config__.frozen for cls in schemas.values())
    tags = [cls.tag for cls in schemas.values() if issubclass(cls, Message)]
    assert len(tags) == len(set(tags)) and all(len(tag) <= messages.MAX_TAG_CHARS for tag in tags)


def test_the_checker_finds_what_is_unbounded():
    class Loose(Record):
        name: str
        count: int
        ratio: float
        items: list[messages.text(4)]
        anything: Any

    assert unbounded(msgspec.inspect.type_info(Loose), "Loose") == [
        "Loose.name: StrType without max_length", "Loose.count: IntType without bounds",
        "Loose.ratio: FloatType that may be inf or NaN", "Loose.items: ListType without max_length",
        "Loose.anything: AnyType is not allowed in a message"]


def test_a_message_is_a_plain_msgpack_frame():
    hello = Hello(2, 3, "vm-2", 77, "local-1")
    assert msgpack.unpackb(encode_hello(hello)) == [VERSION, "hello", {"host": 2, "num_processes": 3,
                                                                       "hostname": "vm-2", "pid": 77,
                                                                       "run_id": "local-1"}]
    assert decode_hello(encode_hello(hello), source="t") == hello
    reply = Reply("abort", "run", (1, 4), "host(s) 1, 4 never arrived")
    assert decode_reply(encode_reply(reply), source="t") == reply


def test_encoding_refuses_what_a_receiver_would():
    with pytest.raises(MessageError, match=rf"^encoding a hello: Expected `str` of length <= {MAX_KEY_CHARS} - at "
                                           r"`\$\.run_id`$"):
        encode_hello(Hello(2, 3, "vm-2", 77, "r" * (MAX_KEY_CHARS + 1)))
    with pytest.raises(MessageError, match=r"^encoding a reply: Invalid enum value 'maybe' - at `\$\.kind`$"):
        encode_reply(Reply("maybe", "run", (), ""))
    with pytest.raises(MessageError, match=r"^encoding a hello: can.t serialize ints < -2\*\*63 or > 2\*\*64 - 1$"):
        encode_hello(Hello(2**64, 3, "vm-2", 77, "run"))


def test_convert_reads_a_json_value_with_the_same_schemas():
    assert messages.convert({"kind": "go", "run_id": "r", "missing": [1], "reason": ""}, Reply,
                            source="t") == Reply("go", "r", (1,), "")
    with pytest.raises(MessageError, match=r"^checkpoint step 4: Expected `int` >= 0 - at `\$\.missing\[0\]`$"):
        messages.convert({"kind": "go", "run_id": "r", "missing": [-1], "reason": ""}, Reply,
                         source="checkpoint step 4")
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(MessageError, match=r"^t: Expected `int`, got `array` - at `\$\.missing\[0\]`$"):
        messages.convert({"kind": "go", "run_id": "r", "missing": nested, "reason": ""}, Reply, source="t")


HONEST = [encode_hello(Hello(2, 3, "vm-2", 77, "local-1")), encode_reply(Reply("abort", "run", (1, 4), "why"))]


@hostile(400)
@given(tamper=TAMPERS)
def test_a_tampered_hello_or_reply_is_what_it_says_or_a_short_message_error(tamper: Tamper):
    for honest, decode, encode in zip(HONEST, (decode_hello, decode_reply), (encode_hello, encode_reply)):
        try:
            message = decode(tamper(honest), source="a connection from 10.0.0.9:4242")
        except MessageError as err:
            assert str(err).startswith("a connection from 10.0.0.9:4242: ") and len(str(err)) <= MAX_MESSAGE_CHARS
            continue
        assert decode(encode(message), source="again") == message


@functools.cache
def every_honest_message() -> list[tuple[bytes, Callable[[bytes], object], Callable[[object], bytes]]]:
    """One real message of every kind, with its decoder and encoder."""
    from tests.test_codec import BASE_PAYLOADS
    from tests.test_preflight_units import _REPORT

    found = [(encode_payload(p), partial(decode_payload, kind=type(p)), encode_payload) for p in BASE_PAYLOADS]
    found.append((_REPORT, decode_report, encode_report))
    found.extend(zip(HONEST, (decode_hello, decode_reply), (encode_hello, encode_reply)))
    return found


@pytest.mark.soak
@hostile(20_000)
@given(tamper=TAMPERS, which=st.integers(0, 2**16))
def test_soak_any_tampered_message_is_what_it_says_or_a_short_message_error(tamper: Tamper, which: int):
    """20,000 more tampers over every kind of message (287 s here, 59 s of CPU: `pytest -m soak`)."""
    honest, decode, encode = every_honest_message()[which % len(every_honest_message())]
    try:
        message = decode(tamper(honest), source="from host 5")
    except MessageError as err:
        assert str(err).startswith("from host 5: ") and len(str(err)) <= MAX_MESSAGE_CHARS
        return
    assert decode(encode(message), source="again") == message
