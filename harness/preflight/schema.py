"""The schema of `<run_dir>/preflight.json` (JSON Schema, draft 2020-12).

Stable for tools: `schema` names the version; a change that breaks readers bumps it.
tests/test_preflight.py validates real reports against it with the jsonschema package.
It describes a document this harness writes for others to read; what hosts send each
other is checked by wire.py's schemas (harness/runtime/messages.py).
"""

from __future__ import annotations

SCHEMA_ID = "podharness.preflight/1"

_STATUS = {"enum": ["PASS", "WARN", "FAIL", "SKIP"]}
_NUMBER_MAP = {"type": "object", "additionalProperties": {"type": "number"}}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _record(properties: dict, *, optional: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": [name for name in properties if name not in optional]}


CELL = _record({
    "host": {"type": "integer", "minimum": 0},
    "status": _STATUS,
    "value": {"type": "string"},  # the table's short text
    "detail": {"type": "string"},  # the full sentence
    "seconds": {"type": "number", "minimum": 0},  # spent on this check by this host
    "metrics": _NUMBER_MAP,  # what was measured, by name (latency_ms, write_ms, ...)
})

MEASUREMENT = _record({
    "collective": {"enum": ["all_gather", "reduce_scatter", "all_reduce", "all_to_all"]},
    "axis": {"type": "string"},
    "axis_size": {"type": "integer", "minimum": 2},
    "bytes": {"type": "integer", "minimum": 1},  # per device
    "time_s": {"type": "number", "exclusiveMinimum": 0},  # the collective's own time
    "algbw_gbytes_per_s": {"type": "number", "minimum": 0},
    "busbw_gbytes_per_s": {"type": "number", "minimum": 0},
    "latency_s": _NUMBER_MAP,  # host index (as a string) -> that host's latency
})

PREFLIGHT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "harness-preflight report",
    **_record({
        "schema": {"const": SCHEMA_ID},
        "verdict": {"enum": ["PASS", "WARN", "FAIL"]},
        "exit_code": {"enum": [0, 1]},
        "summary": {"type": "string"},
        "created_utc": {"type": "string"},
        "run_id": {"type": "string"},
        "config": _record({"preset": {"type": ["string", "null"]}, "hash": {"type": ["string", "null"]}}),
        "pod": _record({
            "num_processes": {"type": "integer", "minimum": 1},
            "coordinator_address": {"type": ["string", "null"]},
            "mesh": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
            "platform": {"type": ["string", "null"]},
            "device_kind": {"type": ["string", "null"]},
        }),
        "testing_fault": {"oneOf": [{"type": "null"},
                                    _record({"kind": {"type": "string"}, "host": {"type": "integer"}})]},
        "aborted": {"oneOf": [{"type": "null"}, _record({
            "check": {"type": "string"}, "reason": {"type": "string"},
            "hosts": {"type": "array", "items": {"type": "integer", "minimum": 0}}})]},
        "hosts": {"type": "array", "minItems": 1, "items": _record({
            "host": {"type": "integer", "minimum": 0},
            "hostname": {"type": ["string", "null"]},  # null: the host never reported
            "pid": {"type": ["integer", "null"]},
        })},
        "checks": {"type": "array", "items": _record({
            "check": {"enum": ["rendezvous", "consistency", "devices", "host speed", "interconnect", "storage",
                               "storage throughput", "checkpoint round trip", "dry run"]},
            "status": _STATUS,  # the worst of its cells
            "cells": {"type": "array", "items": CELL},
        })},
        "failures": {"type": "array", "items": _record({
            "check": {"type": "string"}, "host": {"type": "integer", "minimum": 0},
            "value": {"type": "string"}, "detail": {"type": "string"}})},
        "consistency": _record({
            "pod": _STRING_MAP,  # fact -> the pod's value
            "hosts": {"type": "object", "additionalProperties": _STRING_MAP},  # host -> fact -> value
        }),
        "slow_host_factor": {"type": "number", "exclusiveMinimum": 1},  # host speed and the dry run's steps
        "storage_throughput": {"oneOf": [{"type": "null"}, _record({  # every host together, started together
            "hosts": {"type": "integer", "minimum": 1},
            "bytes": {"type": "number", "minimum": 0},  # written, then read, by all of them
            "write_mb_per_s": {"type": "number", "minimum": 0},  # bytes / the slowest host's time (1 MB = 1e6 B)
            "read_mb_per_s": {"type": "number", "minimum": 0}})]},
        "interconnect": _record({
            "straggler_factor": {"type": "number", "exclusiveMinimum": 1},
            "published_ici_gbytes_per_s": {"type": ["number", "null"]},
            "measurements": {"type": "array", "items": MEASUREMENT},
        }),
    }),
}
