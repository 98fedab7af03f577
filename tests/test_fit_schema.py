"""fit.json's published schema (harness/fit/schema.py) takes what harness-fit writes and
refuses what it would not: a record missing a field, with a field it does not know, of
another version, or whose mode and fields disagree. Real runs' fit.json files are
validated in tests/test_fit_cli.py, test_fit_compare.py and test_fit_settings.py.

    .venv/bin/python -m pytest -q tests/test_fit_schema.py
"""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from harness.fit.report import write_json
from harness.fit.schema import FIT_SCHEMA, SCHEMA_ID
from tests.support.fit_reports import comparison, memory_report, target_row


def _written(result, tmp_path) -> dict:
    write_json(result, tmp_path / "fit.json")
    return json.loads((tmp_path / "fit.json").read_text())


@pytest.fixture(params=["fits", "out of memory", "targets"])
def record(request, tmp_path) -> dict:
    if request.param == "targets":
        rows = [target_row("v6e-8", seconds=0.2, usd=2.0, batch_size=256, requested=256),
                target_row("v5litepod-16", seconds=0.5, usd=4.0, batch_size=256, requested=256, fits=False)]
        return _written(comparison(rows, 256), tmp_path)
    return _written(memory_report(request.param == "fits"), tmp_path)


def test_what_harness_fit_writes_is_valid(record):
    jsonschema.Draft202012Validator.check_schema(FIT_SCHEMA)
    assert record["schema"] == SCHEMA_ID == "podharness.fit/1"
    jsonschema.validate(record, FIT_SCHEMA)


def _broken(record: dict, change) -> dict:
    broken = copy.deepcopy(record)
    change(broken)
    return broken


@pytest.mark.parametrize("change", [
    lambda r: r.pop("schema"),
    lambda r: r.update(schema="podharness.fit/0"),
    lambda r: r.pop("mode"),
    lambda r: r.update(mode="fit" if r["mode"] == "targets" else "targets"),
    lambda r: r.update(surprise=1),
    lambda r: (r["targets"][0] if "targets" in r else r).pop("verdict"),
    lambda r: (r["targets"][0]["report"] if "targets" in r else r).update(verdict="MAYBE"),
    lambda r: (r["targets"][0]["report"] if "targets" in r else r)["memory_per_device_bytes"].update(hbm=-1),
    lambda r: (r["targets"][0]["report"] if "targets" in r else r)["target"].update(chips="16"),
], ids=["no schema", "old version", "no mode", "mode of another answer", "unknown field", "no verdict",
        "unknown verdict", "negative bytes", "chips as text"])
def test_a_record_harness_fit_would_not_write_is_refused(record, change):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_broken(record, change), FIT_SCHEMA)
