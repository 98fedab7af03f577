"""The schema of `<run_dir>/fit.json` (JSON Schema, draft 2020-12).

Stable for tools: `schema` names the version; a change that breaks readers bumps it.
`mode` says which answer it holds: "fit" (one target, one setting), "targets"
(`--targets`: one row per target, each with its full report) or "settings"
(`--search settings`: every setting tried, the winner's report and command).
tests/test_fit_cli.py, test_fit_compare.py and test_fit_settings.py validate the
fit.json their real runs write against it with the jsonschema package.
"""

from __future__ import annotations

SCHEMA_ID = "podharness.fit/1"

_COUNT = {"type": "integer", "minimum": 0}
_BYTES = {"type": "integer", "minimum": 0}
_SECONDS = {"type": "number", "minimum": 0}
_MAYBE_BYTES = {"type": ["integer", "null"], "minimum": 0}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_MAYBE_STRING = {"type": ["string", "null"]}
_VERDICT = {"enum": ["FITS", "DOES NOT FIT"]}
_REMAT = {"enum": ["none", "dots", "offload", "full"]}


def _record(properties: dict, *, optional: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": [name for name in properties if name not in optional]}


def _maybe(record: dict) -> dict:
    return {"anyOf": [{"type": "null"}, record]}


def _map_of(value: dict) -> dict:
    return {"type": "object", "additionalProperties": value}


CHIP = _record({"name": {"type": "string"}, "hbm_bytes": _BYTES, "peak_bf16_flops": {"type": "number"},
                "hbm_bytes_per_s": {"type": "number"}, "source": {"type": "string"}})

TARGET = _record({
    "product": {"type": "string"}, "topology": {"type": "string"}, "chip_config": {"enum": ["default", "megacore"]},
    "chips_per_host_bounds": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3,
                              "maxItems": 3},
    "num_slices": {"type": "integer", "minimum": 1}, "chips": {"type": "integer", "minimum": 1}, "chip": CHIP,
    "devices": {"type": "integer", "minimum": 1}, "hosts_per_slice": {"type": "integer", "minimum": 1},
})

MODEL = _record({
    "name": {"type": "string"}, "size": _MAYBE_STRING, "parameters": {"type": "number", "minimum": 0},
    "param_dtype": {"type": "string"}, "compute_dtype": {"type": "string"}, "remat": _REMAT,
    "analytic_flops": {"type": "boolean"},
})

MEMORY = _record({
    "parameters": _BYTES, "optimizer state": _BYTES, "batch": _BYTES, "step and rng": _BYTES,
    # the compiler's figures: absent (null) when it refused
    "argument padding": _MAYBE_BYTES, "temporaries": _MAYBE_BYTES, "outputs not aliased": _MAYBE_BYTES,
    "generated code": _MAYBE_BYTES, "peak": _MAYBE_BYTES, "hbm": _BYTES,
    "pinned host temporaries": _MAYBE_BYTES,   # remat offload's, beside HBM (null: none)
}, optional=("argument padding", "temporaries", "outputs not aliased", "generated code"))

PROBE = _record({"batch_size": {"type": "integer", "minimum": 1}, "fits": {"type": "boolean"},
                 "bytes": _MAYBE_BYTES, "seconds": _SECONDS, "cached": {"type": "boolean"}})

SEARCH = _record({"largest": {"type": ["integer", "null"], "minimum": 1},
                  "smallest_failing": {"type": ["integer", "null"], "minimum": 1},
                  "proven": {"type": "boolean"}, "probes": {"type": "array", "items": PROBE}})

PLAN = _record({
    "bytes_total": _BYTES, "bytes_per_host": _map_of(_BYTES), "bytes_largest_host": _BYTES,
    "write_mb_per_s_per_host": _MAYBE_NUMBER, "throughput_source": _MAYBE_STRING, "save_seconds": _MAYBE_NUMBER,
    "mtbf_seconds": {"type": "number", "exclusiveMinimum": 0}, "interval_seconds": _MAYBE_NUMBER,
    "interval_steps": _MAYBE_NUMBER, "step_seconds_estimate": _MAYBE_NUMBER,
    "lost_fraction_saves": _MAYBE_NUMBER, "lost_fraction_rework": _MAYBE_NUMBER,
})

COMPILES = _record({"compiled": _COUNT, "compiled_fits": _COUNT, "from_cache": _COUNT,
                    "workers": {"type": "integer", "minimum": 1}, "worker_peak_rss_mb": _map_of({"type": "number"})})

REPORT = _record({
    "mode": {"const": "fit"},
    "verdict": _VERDICT,
    "headroom_percent": _MAYBE_NUMBER,   # (HBM - peak or required) / HBM; negative when it does not fit
    "target": TARGET,
    "model": MODEL,
    "mesh": _map_of({"type": "integer", "minimum": 1}),
    "global_batch_size": {"type": "integer", "minimum": 1},
    "memory_per_device_bytes": MEMORY,
    "out_of_memory": _maybe(_record({"message": {"type": "string"}, "required_bytes": _MAYBE_BYTES,
                                     "available_bytes": _MAYBE_BYTES})),
    "largest_batch": _maybe(SEARCH),     # null with --no_search
    "flops": _maybe(_record({"per_step": _MAYBE_NUMBER, "per_device": _MAYBE_NUMBER, "source": {"type": "string"},
                             "compiler_per_device": _MAYBE_NUMBER})),
    "step_time_lower_bound": _maybe(_record({
        "seconds": _SECONDS, "limited_by": {"type": "string"}, "compute_seconds": _MAYBE_NUMBER,
        "hbm_seconds": _SECONDS, "hbm_bytes_per_device": _BYTES, "peak_bf16_flops": {"type": "number"},
        "hbm_bytes_per_s": {"type": "number"}, "source": {"type": "string"}})),
    "step_cost": _maybe(_record({
        "estimate_seconds": _SECONDS, "mfu": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "chips": {"type": "integer", "minimum": 1}, "usd_per_chip_hour": {"type": "number", "minimum": 0},
        "price_region": {"type": "string"}, "price_source": {"type": "string"}, "prices_as_of": {"type": "string"},
        "usd_per_1000_steps": {"type": "number", "minimum": 0}})),
    "checkpoint_plan": _maybe(PLAN),
    "collectives": _maybe(_map_of(_record({"ops": _COUNT, "in_loops": _COUNT, "runs_per_step": _COUNT,
                                           "bytes_per_step": _BYTES}))),
    "compiler_bytes_accessed_per_device": _MAYBE_NUMBER,
    "program_fingerprint": _MAYBE_STRING,   # null when it did not fit
    "compile_seconds": _SECONDS,
    "compiles": _maybe(COMPILES),
    "wall_seconds": _SECONDS,
    "wider_fsdp": _maybe(_record({"fsdp_devices": {"type": "integer", "minimum": 2}, "state_bytes": _BYTES,
                                  "now_bytes": _BYTES})),
    # memory_analysis() as libtpu gave it, by field (argument_size, peak_memory, host_temp_size, ...)
    "compiler_memory_analysis": _maybe(_map_of(_BYTES)),
})

TARGET_ROW = _record({
    "product": {"type": "string"}, "verdict": _VERDICT,
    "settings": _record({"fsdp_devices": {"type": "integer", "minimum": 1}, "remat": _REMAT,
                         "batch_size": {"type": "integer", "minimum": 1}}),
    "note": {"type": "string"}, "chips": {"type": "integer", "minimum": 1}, "hosts": {"type": "integer", "minimum": 1},
    "peak_bytes_per_chip": _MAYBE_BYTES, "hbm_bytes": _BYTES, "step_time_bound_s": _MAYBE_NUMBER,
    "step_time_estimate_s": _MAYBE_NUMBER, "usd_per_1000_steps": _MAYBE_NUMBER,
    "largest_batch": {"type": ["integer", "null"]}, "checkpoint_plan": _maybe(PLAN), "report": REPORT,
})

COMPARISON = _record({
    "mode": {"const": "targets"},
    "global_batch_size": {"type": "integer", "minimum": 1},
    "ranking": {"type": "array", "items": {"type": "string"}},   # the cheapest that fits first
    "assumptions": _record({"mfu": {"type": "number"}, "price_per_chip_hour": _MAYBE_NUMBER,
                            "prices_as_of": {"type": "string"}, "mtbf_hours": {"type": "number"},
                            "write_mb_per_s_per_host": _MAYBE_NUMBER, "throughput_source": _MAYBE_STRING}),
    "targets": {"type": "array", "items": TARGET_ROW, "minItems": 1},
    "compiles": COMPILES,
    "wall_seconds": _SECONDS,
})

SETTING = _record({
    "fsdp_devices": {"type": "integer", "minimum": 1}, "remat": _REMAT,
    "status": {"enum": ["fits", "out of memory", "not compiled"]},
    "largest_batch": {"type": ["integer", "null"]},   # null: refused at the requested batch
    "proven": {"type": "boolean"}, "compiles": _COUNT,
    "step_time_bound_s": _MAYBE_NUMBER, "limited_by": _MAYBE_STRING, "bound_per_sample_s": _MAYBE_NUMBER,
})

SETTINGS_SEARCH = _record({
    "mode": {"const": "settings"},
    "target": {"type": "string"},
    "requested_batch": {"type": "integer", "minimum": 1},   # the smallest global batch a setting must take
    "winner": _maybe(SETTING),
    "command": _MAYBE_STRING,          # the winner as a runnable harness-train command
    "settings": {"type": "array", "items": SETTING, "minItems": 1},   # ranked, the winner first
    "report": _maybe(REPORT),
})

ANSWERS = {"fit": REPORT, "targets": COMPARISON, "settings": SETTINGS_SEARCH}

FIT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "harness-fit report",
    "type": "object",
    "required": ["schema", "mode"],
    "properties": {"schema": {"const": SCHEMA_ID}, "mode": {"enum": list(ANSWERS)}},
    # `mode` picks the answer's record; `schema` stands beside its own fields.
    "allOf": [{"if": {"properties": {"mode": {"const": mode}}},
               "then": {**answer, "properties": {**answer["properties"], "schema": {"const": SCHEMA_ID}},
                        "required": ["schema", *answer["required"]]}} for mode, answer in ANSWERS.items()],
}
