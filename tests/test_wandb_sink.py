"""WandbSink against real offline wandb runs, read back from the `.wandb` log.

    .venv/bin/python -m pytest -q tests/test_wandb_sink.py
"""

from __future__ import annotations

import dataclasses

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.outputs.pictures import render_contact_sheet
from harness.hard_examples.merge import GlobalStats
from harness.outputs.wandb_sink import RUN_ID_FILE, TABLE_COLUMNS, WandbSink
from tests.support.wandb_offline import read_offline_run
from tests.test_pictures import make_entries

REPO = Path(__file__).resolve().parents[1]
STATS = GlobalStats(num_hosts=2, first_step=0, last_step=19, num_samples=640, num_nonfinite=0,
                    num_high_loss=70, loss_mean=2.5, loss_max=9.0, loss_min=0.3, threshold=7.5)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Offline wandb whose every folder is under tmp_path."""
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "env" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield tmp_path
    import wandb

    wandb.teardown()  # wandb reads the environment once per process setup


def sink_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "harness.wandb" and r.levelno >= logging.WARNING]


def make_sink(run_dir: Path, *, resume: bool = False, config: dict | None = None, **overrides) -> WandbSink:
    arguments = dict(enabled=True, project="podharness-test", run_name="unit", run_dir=run_dir,
                     config=config or {"lr": 0.001}, is_primary=True, resume=resume)
    return WandbSink(**{**arguments, **overrides})


def test_offline_run_records_metrics_hard_examples_and_summary(wandb_env, monkeypatch):
    # The sink points wandb's staging folders under the run when the user did not.
    monkeypatch.delenv("WANDB_DATA_DIR")
    monkeypatch.delenv("WANDB_CACHE_DIR")
    run_dir = wandb_env / "run"
    entries = make_entries(4)
    long_note = "x" * 40_000  # spans a 32 KiB block of the log: checks chunk reassembly
    sink = make_sink(run_dir, config={"lr": 0.001, "model": {"width": 64}, "note": long_note})
    for step in (0, 10, 20):
        sink.log_metrics(step, {"loss": 3.0 - step / 10, "grad_norm": np.float32(0.5)})
    sink.log_hard_examples(20, entries, STATS)
    sink.log_summary({"final_loss": 1.0, "hard_examples/count": 4})
    sink.finish()

    assert sink.url is None
    assert sink.run_path.parent == run_dir / "wandb" and sink.run_path.name.startswith("offline-run-")
    assert (run_dir / RUN_ID_FILE).read_text().strip() == sink.run_id
    run = read_offline_run(sink.run_path)
    assert run.run_id == sink.run_id
    assert run.config["lr"] == 0.001 and run.config["model"] == {"width": 64} and run.config["note"] == long_note
    rows = run.history_by_step
    assert sorted(rows) == [0, 10, 20]
    for step in (0, 10, 20):
        assert rows[step]["loss"] == pytest.approx(3.0 - step / 10)
        assert rows[step]["grad_norm"] == pytest.approx(0.5)
    logged = rows[20]
    assert logged["hard_examples/threshold"] == 7.5
    assert logged["hard_examples/num_entries"] == 4 and logged["hard_examples/total_samples"] == 640
    assert logged["hard_examples/table"]["nrows"] == 4 and logged["hard_examples/table"]["ncols"] == 7
    assert run.summary["final_loss"] == 1.0 and run.summary["hard_examples/count"] == 4

    files = sink.run_path / "files" / "media"
    (table_file,) = (files / "table").rglob("*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == list(TABLE_COLUMNS)
    assert len(table["data"]) == 4 and all(len(row) == 7 for row in table["data"])
    assert [row[1:] for row in table["data"]] == [
        [e.loss, e.step, e.host, e.sample_id, e.lang_action, e.prompt] for e in entries
    ]

    # The table's images travel in its artifact, staged for `wandb sync` under the run.
    (artifact,) = [a for a in run.artifacts if a["type"] == "run_table"]
    staged = {path: Path(local) for path, local in artifact["files"].items()}
    assert all(local.is_relative_to(run_dir / "wandb" / "data") for local in staged.values())
    (table_path,) = [p for p in staged if p.endswith(".table.json")]
    full_table = json.loads(staged[table_path].read_text())
    assert [row[4] for row in full_table["data"]] == [e.sample_id for e in entries]
    for row, entry in zip(full_table["data"], entries):
        image_ref = row[0]
        assert (image_ref["width"], image_ref["height"]) == (128, 64)
        with Image.open(staged[image_ref["path"]]) as picture:
            np.testing.assert_array_equal(np.asarray(picture), entry.image)

    (sheet_file,) = (files / "images").rglob("*.png")
    expected = render_contact_sheet(entries, step=20, threshold=7.5)
    with Image.open(sheet_file) as picture:
        assert picture.size == expected.size
    assert rows[20]["hard_examples/contact_sheet"]["path"].endswith(sheet_file.name)


def test_resume_continues_the_same_run_and_skips_old_steps(wandb_env, caplog):
    run_dir = wandb_env / "run"
    first = make_sink(run_dir)
    first.log_metrics(0, {"loss": 2.0})
    first.log_metrics(5, {"loss": 1.5})
    first.log_metrics(3, {"loss": 9.9})  # below the last step: skipped, not an error
    first.finish()
    assert sorted(read_offline_run(first.run_path).history_by_step) == [0, 5]

    resumed = make_sink(run_dir, resume=True)
    resumed.log_metrics(5, {"loss": 1.4})
    resumed.log_metrics(6, {"loss": 1.3})
    resumed.log_hard_examples(6, [], dataclasses.replace(STATS, threshold=None))
    resumed.finish()
    assert not sink_warnings(caplog)
    assert resumed.run_id == first.run_id and resumed.run_path != first.run_path
    second = read_offline_run(resumed.run_path)
    assert second.run_id == first.run_id
    assert sorted(second.history_by_step) == [5, 6]
    row = second.history_by_step[6]
    assert row["hard_examples/num_entries"] == 0 and row["hard_examples/table"]["nrows"] == 0
    assert "hard_examples/threshold" not in row

    fresh = make_sink(run_dir, resume=False)
    fresh.finish()
    assert fresh.run_id != first.run_id
    assert (run_dir / RUN_ID_FILE).read_text().strip() == fresh.run_id


def test_unwritable_run_dir_warns_once_and_turns_the_sink_off(wandb_env, caplog):
    blocker = wandb_env / "a_file"
    blocker.write_text("not a folder")
    sink = make_sink(blocker / "run")
    sink.log_metrics(0, {"loss": 1.0})
    sink.log_hard_examples(0, make_entries(2), STATS)
    sink.log_summary({"x": 1})
    sink.finish()
    (warning,) = sink_warnings(caplog)
    assert "init failed" in warning and "NotADirectoryError" in warning and "\n" not in warning
    assert sink.run_id is None and sink.run_path is None
    assert not (wandb_env / "env" / "wandb_dir" / "wandb").exists(), "fell back to WANDB_DIR"


def test_error_while_logging_warns_once_and_stops_logging(wandb_env, caplog):
    sink = make_sink(wandb_env / "run")
    sink.log_metrics(0, {"loss": 1.0})
    sink.log_metrics(1, {"loss": "not a number"})
    sink.log_metrics(2, {"loss": 0.5})
    sink.log_hard_examples(2, make_entries(1), STATS)
    sink.finish()
    (warning,) = sink_warnings(caplog)
    assert "log failed" in warning and "ValueError" in warning
    assert sorted(read_offline_run(sink.run_path).history_by_step) == [0]


def test_unreachable_server_fails_init_within_the_timeout(wandb_env, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "1")
    sink = make_sink(wandb_env / "run")
    sink.log_metrics(0, {"loss": 1.0})
    sink.finish()
    (warning,) = sink_warnings(caplog)
    assert "init failed" in warning and "127.0.0.1:9" in warning
    assert sink.run_id is None


def test_wandb_mode_disabled_writes_nothing(wandb_env, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = wandb_env / "run"
    run_dir.mkdir()
    sink = make_sink(run_dir)
    sink.log_metrics(0, {"loss": 1.0})
    sink.log_hard_examples(0, make_entries(1), STATS)
    sink.log_summary({"x": 1})
    sink.finish()
    assert not sink_warnings(caplog)
    assert list(run_dir.iterdir()) == []
    assert sink.run_id is None and sink.url is None and sink.run_path is None


def test_other_hosts_and_no_wandb_never_import_wandb(tmp_path):
    script = f"""
import sys
from pathlib import Path
from harness.hard_examples.merge import GlobalStats
from harness.outputs.wandb_sink import WandbSink
from tests.test_pictures import make_entries
for enabled, is_primary in ((False, True), (True, False)):
    run_dir = Path({str(tmp_path)!r}) / f"run_{{enabled}}_{{is_primary}}"
    sink = WandbSink(enabled=enabled, project="p", run_name=None, run_dir=run_dir, config={{}},
                     is_primary=is_primary, resume=True)
    sink.log_metrics(0, {{"loss": 1.0}})
    sink.log_hard_examples(0, make_entries(1), GlobalStats(1, 0, 0, 1, 0, 0, 1.0, 1.0, 1.0, None))
    sink.log_summary({{"x": 1}})
    sink.finish()
    assert sink.run_id is None and not run_dir.exists(), run_dir
assert "wandb" not in sys.modules, "wandb was imported"
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
