"""What hosts send each other during a preflight, as harness/runtime/messages.py
messages: msgpack, never pickle, decoded as hostile input. The Structs below are the
schemas:

- `Report` (each host -> every host, one allgather per stage; exchange.py): a
  `results.HostReport` with its observations, raw interconnect timings and code files
  (code_tree.py; at most `MAX_CODE_FILES`, sorted by label).
- `Hello` (each host -> the coordinator, before jax.distributed starts, over TCP;
  rollcall.py), carrying the launch's run id, which tells a host of another launch apart.
- `Reply` (the coordinator -> each host): `go`, or `abort` naming who is missing and why.

Encoding a report cuts its texts to their limits (and the code files to
`MAX_CODE_FILES`) and leaves out non-finite metrics: a broken chip's NaN must not stop
its host from reporting it (`detail` says what was wrong).
"""

import math
from typing import Literal

from harness.preflight.results import ROWS, STATUSES, HostReport, Observation, Timing
from harness.runtime import messages
from harness.runtime.messages import Finite, Message, Natural, Record, array, mapping, text

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

Value = text(MAX_VALUE_CHARS)
Detail = text(MAX_TEXT_CHARS)
Key = text(MAX_KEY_CHARS)


class WireObservation(Record):
    row: Literal[ROWS]
    status: Literal[STATUSES]
    value: Value
    detail: Detail
    seconds: Finite
    metrics: mapping(Finite, MAX_MAP_LEN, MAX_KEY_CHARS)


class WireTiming(Record):
    collective: Key
    axis: Key
    axis_size: Natural
    nbytes: Natural
    arrive_s: array(Finite, MAX_REPEATS)
    done_s: array(Finite, MAX_REPEATS)


class Report(Message):
    tag = "host_report"

    host: Natural
    hostname: Value
    pid: Natural
    facts: mapping(Value, MAX_MAP_LEN, MAX_KEY_CHARS)
    code_files: array(tuple[Value, text(MAX_DIGEST_CHARS)], MAX_CODE_FILES)
    observations: array(WireObservation, MAX_OBSERVATIONS)
    timings: array(WireTiming, MAX_TIMINGS)


class Hello(Message):
    tag = "hello"

    host: Natural
    num_processes: Natural
    hostname: Value
    pid: Natural
    run_id: Key  # the launch's (rendezvous.py): a host of another launch carries another


class Reply(Message):
    """The coordinator's answer to the roll call: `go`, or `abort` naming who is missing."""

    tag = "reply"

    kind: Literal["go", "abort"]
    run_id: Key
    missing: array(Natural, MAX_HOSTS)
    reason: Detail


def encode_report(report: HostReport) -> bytes:
    observations = [
        {"row": o.row, "status": o.status, "value": o.value[:MAX_VALUE_CHARS], "detail": o.detail[:MAX_TEXT_CHARS],
         "seconds": float(o.seconds),
         "metrics": {str(k)[:MAX_KEY_CHARS]: float(v) for k, v in o.metrics.items() if math.isfinite(float(v))}}
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
    return messages.encode(Report, body, source=f"encoding the report of host {report.host}")


def decode_report(data: bytes, *, source: str) -> HostReport:
    wire = messages.decode(data, Report, source=source, max_bytes=MAX_REPORT_BYTES)
    observations = tuple(Observation(o.row, o.status, o.value, o.detail, o.seconds, o.metrics)
                         for o in wire.observations)
    timings = tuple(Timing(t.collective, t.axis, t.axis_size, t.nbytes, t.arrive_s, t.done_s) for t in wire.timings)
    return HostReport(wire.host, wire.hostname, wire.pid, wire.facts, observations, timings, wire.code_files)


def encode_hello(hello: Hello) -> bytes:
    return messages.encode(Hello, hello, source="encoding a hello")


def decode_hello(data: bytes, *, source: str) -> Hello:
    return messages.decode(data, Hello, source=source, max_bytes=MAX_MESSAGE_BYTES)


def encode_reply(reply: Reply) -> bytes:
    return messages.encode(Reply, reply, source="encoding a reply")


def decode_reply(data: bytes, *, source: str) -> Reply:
    return messages.decode(data, Reply, source=source, max_bytes=MAX_MESSAGE_BYTES)
