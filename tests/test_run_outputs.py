"""What a person looks at after a real CLI run: wandb (offline, read back), pictures,
the hard-example JSON they match, the summary; and a broken wandb never stops training."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.outputs.wandb_sink import TABLE_COLUMNS
from tests.support.picture_reading import framed_boxes, nearest_upscale, pixels_of
from tests.support.runs import harness_env, run_harness
from tests.support.wandb_offline import read_offline_run

STEPS, LOG_EVERY, HARD_EVERY, K, THUMB = 12, 4, 6, 8, 32


def _wandb_env(root: Path, **extra: str) -> dict[str, str]:
    dirs = {name: str(root / name.lower()) for name in
            ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
    return harness_env(**dirs, **extra)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    env = _wandb_env(root, WANDB_MODE="offline")
    result = run_harness(
        ["--config", "smoke", "--num_train_steps", str(STEPS), "--log_interval", str(LOG_EVERY),
         "--hard_example_log_interval", str(HARD_EVERY), "--max_hard_examples_buffer", str(K),
         "--hard_example_image_size", str(THUMB), "--checkpoint_dir", str(root / "ckpt"),
         "--run_dir", str(root / "run"), "--wandb_run_name", "outputs-test"],
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", result


def test_wandb_offline_run_has_history_table_and_stats(offline_run):
    run_dir, _ = offline_run
    (run_path,) = (run_dir / "wandb").glob("offline-run-*")
    run = read_offline_run(run_path)
    assert run.run_id == (run_dir / "wandb_run_id.txt").read_text().strip()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged_steps = [row["step"] for row in metrics]
    assert logged_steps == [0, 4, 8, 11]
    by_step = {}
    for row in run.history:
        by_step.setdefault(row["_step"], {}).update(row)
    for row in metrics:
        assert by_step[row["step"]]["loss"] == row["loss"]
        assert by_step[row["step"]]["max_per_sample_loss"] == row["max_per_sample_loss"]
    for interval in (HARD_EVERY, 2 * HARD_EVERY):
        saved = json.loads((run_dir / "hard_examples" / f"step_{interval}.json").read_text())
        logged = by_step[interval]
        assert logged["hard_examples/table"]["nrows"] == len(saved["entries"]) == K
        assert logged["hard_examples/table"]["ncols"] == len(TABLE_COLUMNS)
        assert logged["hard_examples/total_samples"] == saved["stats"]["num_samples"] == HARD_EVERY * 16
        assert logged["hard_examples/threshold"] == saved["stats"]["threshold"]
    tables = [a for a in run.artifacts if a["type"] == "run_table"]
    assert len(tables) == 2
    for artifact in tables:
        staged = {path: Path(local) for path, local in artifact["files"].items()}
        (table_path,) = [p for p in staged if p.endswith(".table.json")]
        table = json.loads(staged[table_path].read_text())
        assert table["columns"] == list(TABLE_COLUMNS) and len(table["data"]) == K
        for row in table["data"]:
            with Image.open(staged[row[0]["path"]]) as image:
                assert image.size == (THUMB * 2, THUMB)  # two cameras side by side


def test_contact_sheets_show_their_json_entries_in_order_and_the_loss_curve_exists(offline_run):
    """Each sheet's tiles, read row by row, are the images of the wandb table whose rows
    are the JSON's entries, in the JSON's order, enlarged 4x (32 pixels tall -> 128)."""
    run_dir, _ = offline_run
    (run_path,) = (run_dir / "wandb").glob("offline-run-*")
    tables = []
    for artifact in read_offline_run(run_path).artifacts:
        if artifact["type"] == "run_table":
            staged = {path: Path(local) for path, local in artifact["files"].items()}
            (table_path,) = [p for p in staged if p.endswith(".table.json")]
            tables.append((json.loads(staged[table_path].read_text())["data"], staged))
    factor = math.ceil(128 / THUMB)
    for interval in (HARD_EVERY, 2 * HARD_EVERY):
        saved = json.loads((run_dir / "hard_examples" / f"step_{interval}.json").read_text())
        listed = [[e["loss"], e["step"], e["host"], e["sample_id"]] for e in saved["entries"]]
        (rows, staged), = [(rows, staged) for rows, staged in tables if [row[1:5] for row in rows] == listed]
        with Image.open(run_dir / "hard_examples" / f"step_{interval}.png") as sheet:
            pixels = pixels_of(sheet)
        boxes = framed_boxes(pixels)
        assert len(boxes) == len(rows) == K
        for (left, top, right, bottom), row in zip(boxes, rows):
            with Image.open(staged[row[0]["path"]]) as image:
                np.testing.assert_array_equal(pixels[top:bottom, left:right], nearest_upscale(np.asarray(image), factor))
    with Image.open(run_dir / "loss_curve.png") as curve:
        assert curve.size == (1000, 500)


def test_summary_names_what_was_written(offline_run):
    run_dir, result = offline_run
    out = result.stdout
    assert "Training complete!" in out
    assert re.search(r"Steps: 0 -> 12 \(12 run\)", out)
    assert re.search(r"Wall time: [\d.]+ s \([\d.]+ steps/s\)", out)
    assert "Checkpoints written: 6, 12" in out
    assert f"Hard-example intervals logged: 2 (pictures and JSON in {run_dir / 'hard_examples'})" in out
    assert re.search(r"wandb: \S+offline-run-\S+ \(offline; upload with: wandb sync ", out)


def test_broken_wandb_does_not_stop_training(tmp_path):
    """wandb pointed at a dead server: one warning, and the run finishes normally."""
    env = _wandb_env(tmp_path, WANDB_MODE="online", WANDB_API_KEY="x" * 40,
                     WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="2")
    result = run_harness(
        ["--config", "smoke", "--num_train_steps", "6", "--checkpoint_dir", str(tmp_path / "ckpt"),
         "--run_dir", str(tmp_path / "run")],
        env=env, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training complete!" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "harness.wandb" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    assert "wandb: off" in result.stdout
