"""The whole loop through the real CLI on the smoke preset, and the metric sinks.

    .venv/bin/python -m pytest -q tests/test_train_loop.py
"""

from __future__ import annotations

import json
import re

import pytest

from harness.runtime.checkpoint import existing_steps
from harness.outputs.sinks import SCALAR_METRICS, MetricsFile, format_metrics_line, read_metrics
from harness.runtime.schedule import itstime
from tests.support.runs import compile_cache_flags, run_harness

NUMBER = r"-?\d+\.\d{4}"
STEP_LINE = re.compile(
    r"Step +(\d+): " + ", ".join(f"{name}=({NUMBER})" for name in SCALAR_METRICS)
    + r"( \[\d+\.\d steps/s\])?"  # the step rate since the previous line; not on the first
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    cache = compile_cache_flags(tmp_path_factory.getbasetemp() / "jax_compile_cache")
    result = run_harness(["--config", "smoke", *cache, "--checkpoint_dir", str(root / "ckpt"),
                          "--run_dir", str(root / "run")], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, result


def test_help_lists_the_flags():
    result = run_harness(["--help"], timeout=60)

    assert result.returncode == 0, result.stderr
    for flag in ("--config", "--num_train_steps", "--batch_size", "--fsdp_devices", "--resume",
                 "--overwrite", "--checkpoint_dir", "--no_wandb", "--no_hard_examples"):
        assert flag in result.stdout


def test_console_shows_banner_metric_lines_and_completion(smoke_run):
    root, result = smoke_run
    lines = result.stdout.splitlines()

    assert lines[:3] == ["=" * 80, "MOCK TRAINING", "=" * 80]
    for expected in ("  Steps: 12", "  Batch size: 16", "  Log interval: 4",
                     f"  Checkpoint dir: {root / 'ckpt'}", f"  Run dir: {root / 'run'}",
                     "  Processes: 1 x 8 cpu devices", "  Mesh: data=1, fsdp=8"):
        assert expected in lines
    step_lines = [line for line in lines if line.startswith("Step ")]
    assert [STEP_LINE.fullmatch(line) is not None for line in step_lines] == [True] * 4, step_lines
    # Every log_interval (4) steps from 0, and the last step.
    assert step_lines[0].startswith("Step    0: loss=")
    assert STEP_LINE.fullmatch(step_lines[0]).group(7) is None
    assert [int(STEP_LINE.fullmatch(line).group(1)) for line in step_lines] == [0, 4, 8, 11]
    start = lines.index("Starting training loop...")
    complete = lines.index("Training complete!")
    assert start < lines.index(step_lines[0]) and lines.index(step_lines[-1]) < complete
    assert lines[complete - 1] == lines[-1] == "=" * 80
    assert lines[complete + 1:complete + 3] == ["Summary:", "  Steps: 0 -> 12 (12 run)"]
    assert "Traceback" not in result.stderr


def test_metrics_file_has_one_full_precision_row_per_printed_line(smoke_run):
    root, result = smoke_run
    printed = [STEP_LINE.fullmatch(line) for line in result.stdout.splitlines() if line.startswith("Step ")]

    rows = read_metrics(root / "run" / "metrics.jsonl")

    assert [row["step"] for row in rows] == [0, 4, 8, 11]
    for row, match in zip(rows, printed):
        assert list(row) == ["step", *SCALAR_METRICS]
        assert all(isinstance(row[name], float) for name in SCALAR_METRICS)
        assert [f"{row[name]:.4f}" for name in SCALAR_METRICS] == list(match.groups()[1:6])
        # Full precision, not the rounded console value (float32 values have ~7 digits).
        assert any(len(repr(row[name]).split(".")[1]) > 4 for name in SCALAR_METRICS)
        assert 0.0 <= row["token_acc"] <= 1.0
        assert row["max_per_sample_loss"] >= row["loss"] > 0.0
        assert row["grad_norm"] > 0.0 and row["param_norm"] > 0.0


def test_checkpoints_every_save_interval_and_at_the_end(smoke_run):
    root, _ = smoke_run

    assert existing_steps(str(root / "ckpt")) == [6, 12]


# Sinks.

@pytest.mark.parametrize("step, every, last, first, expected", [
    (0, 4, None, False, False), (0, 4, None, True, True), (3, 4, None, False, False), (4, 4, None, False, True),
    (8, 4, 11, False, True), (11, 4, 11, False, True), (11, 4, None, False, False), (7, 1, None, False, True),
])
def test_itstime(step, every, last, first, expected):
    assert itstime(step, every, last=last, first=first) is expected


def test_one_convention_gives_the_seed_log_steps_and_saves_after_every_interval():
    """Logging asks about the step itself (its metrics are of the state after `step`
    updates); saves and gathers ask about the steps done after it."""
    total = 100
    logged = [s for s in range(total) if itstime(s, 10, last=total - 1, first=True)]
    saved = [s + 1 for s in range(total) if itstime(s + 1, 30, last=total)]

    assert logged == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    assert saved == [30, 60, 90, 100]


def test_metrics_line_format():
    metrics = {"loss": 2.34198, "grad_norm": 0.83351, "param_norm": 21.148115,
               "token_acc": 0.0057, "max_per_sample_loss": 9.53471}
    fields = ("loss=2.3420, grad_norm=0.8335, param_norm=21.1481, token_acc=0.0057, "
              "max_per_sample_loss=9.5347")

    assert format_metrics_line(0, metrics) == f"Step    0: {fields}"
    assert format_metrics_line(12345, metrics, steps_per_s=31.26) == f"Step 12345: {fields} [31.3 steps/s]"


def test_metrics_file_on_resume_keeps_earlier_rows_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / (s + 3)} for s in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')

    sink = MetricsFile(path, is_primary=True, start_step=4)
    sink.write(4, {"loss": float("nan")})

    assert read_metrics(path) == rows[:4] + [{"step": 4, "loss": "nan"}]


def test_metrics_file_starts_empty_at_step_0_and_is_silent_off_host_0(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    MetricsFile(path, is_primary=False, start_step=0).write(0, {"loss": 1.0})
    assert not path.parent.exists()

    path.parent.mkdir()
    path.write_text('{"step": 0, "loss": 5.0}\n')
    MetricsFile(path, is_primary=True, start_step=0).write(0, {"loss": 1.0})
    assert read_metrics(path) == [{"step": 0, "loss": 1.0}]
