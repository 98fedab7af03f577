"""Reading a fit.json a real harness-fit run wrote, checked against its published
schema (harness/fit/schema.py) before any test looks inside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from harness.fit.schema import FIT_SCHEMA


def read_fit_json(run_dir: Path) -> dict[str, Any]:
    record = json.loads((run_dir / "fit.json").read_text())
    jsonschema.validate(record, FIT_SCHEMA)
    return record
