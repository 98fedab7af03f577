"""What hosts send each other during a preflight: msgpack, never pickle, decoded as
untrusted input (the style of harness/hard_examples/codec.py, with a schema of its own).

Schema, version 2; every key is required and no other key is allowed:

    host report (each host -> every host, through one allgather per stage):
    {"version": 2, "kind": "host_report", "host": int, "hostname": str, "pid": int,
     "facts": {str: str, ...},
     "code_files": [[label, digest], ...],  (code_tree.py; at most 4096, sorted by label)
     "observations": [{"row": ROW, "status": "PASS"|"WARN"|"FAIL"|"SKIP",
                       "value": str, "detail": str, "seconds": float,
                       "metrics": {str: float, ...}}, ...],
     "timings": [{"collective": str, "axis": str, "axis_size": int, "nbytes": int,
                  "arrive_s": [float, ...], "done_s": [float, ...]}, ...]}

    roll call (before jax.distributed starts, over TCP; rollcall.py):
    {"version": 2, "kind": "hello", "host": int, "num_processes": int, "hostname": str, "pid": int,
     "run_id": str}  (the launch's run id, which tells a host of another launch apart)
    {"version": 2, "kind": "go" | "abort", "run_id": str, "missing": [int, ...], "reason": str}

Decoding checks the size before unpacking, lets msgpack's own limits bound every
allocation, refuses repeated keys, and then checks every field for its exact type (an
int is not a float, a bool is not an int), finite floats, non-negative ints and bounded
texts. Every failure is a `PayloadError` naming the source and the field. Encoding runs
the same checks, so a host cannot send what the others would refuse; it cuts texts to
their limits (and the code files to 4096) and leaves out non-finite metrics (a broken chip's nan must not stop its
host from reporting it: `detail` says what was wrong).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack

from harness.hard_examples.codec import PayloadError
from harness.preflight.results import ROWS, STATUSES, HostReport, Observation, Timing

WIRE_VERSION = 2
MAX_REPORT_BYTES = 4 << 20
MAX_MESSAGE_BYTES = 64 << 10  # a roll call message
MAX_VALUE_CHARS = 200
MAX_TEXT_CHARS = 2000
MAX_KEY_CHARS = 64
MAX_MAP_LEN = 64
MAX_OBSERVATIONS = 64
MAX_TIMINGS = 4096
MAX_REPEATS = 1000
MAX_HOSTS = 1 << 16
MAX_CODE_FILES = 4096
MAX_DIGEST_CHARS = 16
_INT_LIMIT = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class Hello:
    host: int
    num_processes: int
    hostname: str
    pid: int
    run_id: str  # the launch's (rendezvous.py): a host of another launch carries another


@dataclasses.dataclass(frozen=True)
class Reply:
    """The coordinator's answer to the roll call: `go`, or `abort` naming who is missing."""

    kind: str  # "go" | "abort"
    run_id: str
    missing: tuple[int, ...] = ()
    reason: str = ""


# --- A small schema language: a type, a dict (a record with exactly those keys), or one of these.

@dataclasses.dataclass(frozen=True)
class _Text:
    limit: int


@dataclasses.dataclass(frozen=True)
class _List:
    item: Any
    limit: int


@dataclasses.dataclass(frozen=True)
class _Map:
    value: Any


@dataclasses.dataclass(frozen=True)
class _OneOf:
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Pair:
    first: Any
    second: Any


_OBSERVATION = {"row": _OneOf(ROWS), "status": _OneOf(STATUSES), "value": _Text(MAX_VALUE_CHARS),
                "detail": _Text(MAX_TEXT_CHARS), "seconds": float, "metrics": _Map(float)}
_TIMING = {"collective": _Text(MAX_KEY_CHARS), "axis": _Text(MAX_KEY_CHARS), "axis_size": int, "nbytes": int,
           "arrive_s": _List(float, MAX_REPEATS), "done_s": _List(float, MAX_REPEATS)}
_SCHEMAS = {
    "host_report": {"host": int, "hostname": _Text(MAX_VALUE_CHARS), "pid": int,
                    "facts": _Map(_Text(MAX_VALUE_CHARS)),
                    "code_files": _List(_Pair(_Text(MAX_VALUE_CHARS), _Text(MAX_DIGEST_CHARS)), MAX_CODE_FILES),
                    "observations": _List(_OBSERVATION, MAX_OBSERVATIONS),
                    "timings": _List(_TIMING, MAX_TIMINGS)},
    "hello": {"host": int, "num_processes": int, "hostname": _Text(MAX_VALUE_CHARS), "pid": int,
              "run_id": _Text(MAX_KEY_CHARS)},
    "go": {"run_id": _Text(MAX_KEY_CHARS), "missing": _List(int, MAX_HOSTS), "reason": _Text(MAX_TEXT_CHARS)},
}
_SCHEMAS["abort"] = _SCHEMAS["go"]


def _fail(source: str, where: str, problem: str) -> PayloadError:
    return PayloadError(f"{source}: {where}: {problem}")


def _check(value: Any, spec: Any, source: str, where: str) -> None:
    """Raises PayloadError unless `value` matches `spec` exactly. The schemas nest a
    few levels at most, so this recursion is bounded by the schema, not by the bytes."""
    if spec is int:
        if type(value) is not int or not 0 <= value <= _INT_LIMIT:
            raise _fail(source, where, f"must be an int in [0, 2**63), got {type(value).__name__}")
    elif spec is float:
        if type(value) is not float or not math.isfinite(value):
            raise _fail(source, where, f"must be a finite float, got {type(value).__name__}")
    elif isinstance(spec, _Text):
        if type(value) is not str or len(value) > spec.limit:
            raise _fail(source, where, f"must be a string of at most {spec.limit} characters")
    elif isinstance(spec, _OneOf):
        if type(value) is not str or value not in spec.values:
            raise _fail(source, where, f"must be one of {', '.join(spec.values)}")
    elif isinstance(spec, _List):
        if type(value) is not list or len(value) > spec.limit:
            raise _fail(source, where, f"must be an array of at most {spec.limit} entries")
        for i, item in enumerate(value):
            _check(item, spec.item, source, f"{where}[{i}]")
    elif isinstance(spec, _Pair):
        if type(value) is not list or len(value) != 2:
            raise _fail(source, where, "must be an array of 2 entries")
        _check(value[0], spec.first, source, f"{where}[0]")
        _check(value[1], spec.second, source, f"{where}[1]")
    elif isinstance(spec, _Map):
        if type(value) is not dict or len(value) > MAX_MAP_LEN:
            raise _fail(source, where, f"must be a map of at most {MAX_MAP_LEN} entries")
        for key, item in value.items():
            if type(key) is not str or len(key) > MAX_KEY_CHARS:
                raise _fail(source, where, f"keys must be strings of at most {MAX_KEY_CHARS} characters")
            _check(item, spec.value, source, f"{where}[{key!r}]")
    else:
        if type(value) is not dict:
            raise _fail(source, where, "must be a map")
        if set(value) != set(spec):
            missing, unknown = sorted(set(spec) - set(value)), sorted(map(str, set(value) - set(spec)))
            raise _fail(source, where, f"missing keys {missing}, unknown keys {unknown[:5]}")
        for key, item_spec in spec.items():
            _check(value[key], item_spec, source, f"{where}.{key}")


def _encode(kind: str, body: dict) -> bytes:
    message = {"version": WIRE_VERSION, "kind": kind, **body}
    _check(body, _SCHEMAS[kind], f"encoding a {kind} message", "message")
    return msgpack.packb(message, use_bin_type=True, strict_types=True)


def _decode(data: bytes, kinds: tuple[str, ...], source: str, max_bytes: int) -> tuple[str, dict]:
    if not isinstance(data, (bytes, bytearray)):
        raise PayloadError(f"{source}: expected bytes, got {type(data).__name__}")
    if not data:
        raise PayloadError(f"{source}: empty message")
    if len(data) > max_bytes:
        raise PayloadError(f"{source}: {len(data)} bytes is over the limit of {max_bytes}")

    def unique_keys(pairs: list[tuple[Any, Any]]) -> dict:
        mapping = dict(pairs)
        if len(mapping) != len(pairs):
            raise PayloadError(f"{source}: a map repeats a key")
        return mapping

    try:
        wire = msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=unique_keys,
                               max_bin_len=0, max_ext_len=0, max_str_len=max(MAX_TEXT_CHARS * 4, MAX_VALUE_CHARS),
                               max_array_len=max(MAX_TIMINGS, MAX_REPEATS, MAX_HOSTS, MAX_CODE_FILES),
                               max_map_len=max(MAX_MAP_LEN, 16))
    except PayloadError:
        raise
    except (RecursionError, MemoryError) as err:
        raise PayloadError(f"{source}: too deep or too large to unpack ({type(err).__name__})") from err
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as err:
        raise PayloadError(f"{source}: not a valid msgpack message ({type(err).__name__}: {err})") from err
    if type(wire) is not dict:
        raise PayloadError(f"{source}: expected a map at the top level")
    version, kind = wire.pop("version", None), wire.pop("kind", None)
    if type(version) is not int or version != WIRE_VERSION:
        raise PayloadError(f"{source}: version must be {WIRE_VERSION}")
    if kind not in kinds:
        raise PayloadError(f"{source}: kind must be one of {', '.join(kinds)}")
    _check(wire, _SCHEMAS[kind], source, "message")
    return kind, wire


def _finite_metrics(metrics: Any) -> dict[str, float]:
    return {str(k)[:MAX_KEY_CHARS]: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def encode_report(report: HostReport) -> bytes:
    observations = [
        {"row": o.row, "status": o.status, "value": o.value[:MAX_VALUE_CHARS], "detail": o.detail[:MAX_TEXT_CHARS],
         "seconds": float(o.seconds), "metrics": _finite_metrics(o.metrics)}
        for o in report.observations
    ]
    timings = [
        {"collective": t.collective, "axis": t.axis, "axis_size": t.axis_size, "nbytes": t.nbytes,
         "arrive_s": [float(x) for x in t.arrive_s], "done_s": [float(x) for x in t.done_s]}
        for t in report.timings
    ]
    body = {"host": report.host, "hostname": report.hostname[:MAX_VALUE_CHARS], "pid": report.pid,
            "facts": {k: v[:MAX_VALUE_CHARS] for k, v in report.facts.items()},
            "code_files": [[label[:MAX_VALUE_CHARS], digest[:MAX_DIGEST_CHARS]]
                           for label, digest in report.code_files[:MAX_CODE_FILES]],
            "observations": observations, "timings": timings}
    return _encode("host_report", body)


def decode_report(data: bytes, *, source: str) -> HostReport:
    _, wire = _decode(data, ("host_report",), source, MAX_REPORT_BYTES)
    observations = tuple(Observation(**o) for o in wire["observations"])
    timings = tuple(Timing(t["collective"], t["axis"], t["axis_size"], t["nbytes"], tuple(t["arrive_s"]),
                           tuple(t["done_s"])) for t in wire["timings"])
    return HostReport(wire["host"], wire["hostname"], wire["pid"], wire["facts"], observations, timings,
                      tuple((label, digest) for label, digest in wire["code_files"]))


def encode_hello(hello: Hello) -> bytes:
    return _encode("hello", dataclasses.asdict(hello))


def decode_hello(data: bytes, *, source: str) -> Hello:
    _, wire = _decode(data, ("hello",), source, MAX_MESSAGE_BYTES)
    return Hello(**wire)


def encode_reply(reply: Reply) -> bytes:
    return _encode(reply.kind, {"run_id": reply.run_id, "missing": list(reply.missing), "reason": reply.reason})


def decode_reply(data: bytes, *, source: str) -> Reply:
    kind, wire = _decode(data, ("go", "abort"), source, MAX_MESSAGE_BYTES)
    return Reply(kind, wire["run_id"], tuple(wire["missing"]), wire["reason"])
