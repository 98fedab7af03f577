"""`harness-fit --targets`: one row per TPU target, ranked by the cost of 1,000 steps of
the requested batch; exit 0 when one fits, 1 when none does, 2 for bad input with
nothing written; fit.json's record of a comparison.

    .venv/bin/python -m pytest -q tests/test_fit_compare.py
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.fit.compare import rank, row_of, target_config
from harness.fit.economics import PRICES, StepCost
from harness.fit.topology import parse_targets, resolve
from tests.support.fit_json import read_fit_json
from tests.support.runs import REPO_ROOT, failure_report, harness_env
from tests.test_fit_units import _report

SMALL = ["--model", "transformer", "--model_size", "tiny", "--image_size", "32", "--seq_len", "64"]
ROW_KEYS = {"product", "verdict", "settings", "note", "chips", "hosts", "peak_bytes_per_chip", "hbm_bytes",
            "step_time_bound_s", "step_time_estimate_s", "usd_per_1000_steps", "largest_batch", "checkpoint_plan",
            "report"}


def _fit(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.fit", *args, "--run_dir", str(tmp_path / "run")],
                          cwd=REPO_ROOT, env=harness_env(XDG_CACHE_HOME=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=600)


def test_targets_parse_as_products_and_bad_ones_are_usage_errors():
    assert parse_targets("v5e-16, v4:2x2x4,v6e-8", 1) == ["v5litepod-16", "v4-32", "v6e-8"]
    with pytest.raises(UsageError, match="unknown TPU product or topology 'v7-8'"):
        parse_targets("v5litepod-16,v7-8", 1)
    with pytest.raises(UsageError, match=r"--targets needs distinct TPU products, got 'v5e-16,v5litepod-16' "
                                         r"\(v5litepod-16 twice\)"):
        parse_targets("v5e-16,v5litepod-16", 1)


def test_fsdp_keeps_its_size_where_it_divides_and_spans_the_slice_where_not():
    from harness.config import load_preset

    config = load_preset("v5litepod-16").replace(fsdp_devices=16)
    same, note = target_config(config, "v5litepod-32")
    assert (same.mesh.fsdp_devices, same.tpu.topology, same.tpu.chip_config, note) == (16, "v5litepod-32", "", "")
    changed, note = target_config(config, "v6e-8")
    assert changed.mesh.fsdp_devices == 8
    assert note == "--fsdp_devices 16 does not divide its 8 devices: FSDP over the slice"


def test_rows_rank_by_the_cost_of_1000_steps_of_the_requested_batch():
    """Costs by hand: a row's cost per 1,000 steps at its own batch, scaled to the
    requested batch (per sample, the same): $2.00 at batch 256 asked as 512 is $4.00."""
    def with_cost(product: str, usd: float, batch: int, fits: bool = True):
        report = dataclasses.replace(_report(fits), target=resolve(product), batch_size=batch)
        hours = usd / (PRICES["v5litepod"].usd_per_chip_hour * report.target.chips)
        cost = StepCost(hours * 3600 / 1000, 0.4, report.target.chips, PRICES["v5litepod"])
        return row_of(dataclasses.replace(report, cost=cost), "", 512)

    rows = rank([with_cost("v5litepod-16", 2.0, 256), with_cost("v6e-8", 3.0, 512),
                 with_cost("v4-8", 1.0, 512, fits=False), with_cost("v5litepod-32", 3.5, 512)])

    assert [r.product for r in rows] == ["v6e-8", "v5litepod-32", "v5litepod-16", "v4-8"]
    assert [r.usd_per_1000_steps for r in rows[:3]] == pytest.approx([3.0, 3.5, 4.0])
    assert rows[3].usd_per_1000_steps is None


def test_compare_exits_0_with_a_ranked_table_fit_json_and_a_chart(tmp_path):
    result = _fit("--config", "v5litepod-16", *SMALL, "--batch_size", "64", "--fsdp_devices", "16",
                  "--targets", "v5litepod-4,v6e-8", "--no_search", "--storage_mbps", "250", tmp_path=tmp_path)

    assert result.returncode == 0, failure_report(result)
    assert "Traceback" not in result.stderr
    assert "WHICH POD?  transformer tiny" in result.stdout
    assert "--fsdp_devices 16 does not divide its 4 devices: FSDP over the slice" in result.stdout
    saved = read_fit_json(tmp_path / "run")
    assert saved["mode"] == "targets" and saved["global_batch_size"] == 64
    assert sorted(saved["ranking"]) == ["v5litepod-4", "v6e-8"]
    assert saved["assumptions"]["write_mb_per_s_per_host"] == 250.0 and saved["assumptions"]["mfu"] == 0.4
    costs = [row["usd_per_1000_steps"] for row in saved["targets"]]
    assert costs == sorted(costs) and all(c > 0 for c in costs)
    for row in saved["targets"]:
        assert set(row) == ROW_KEYS and row["verdict"] == "FITS"
        assert row["report"]["verdict"] == "FITS" and row["report"]["step_cost"]["usd_per_1000_steps"] == pytest.approx(
            row["usd_per_1000_steps"])
        plan = row["checkpoint_plan"]
        assert plan["save_seconds"] == pytest.approx(plan["bytes_largest_host"] / 250e6)
    assert saved["compiles"]["compiled"] == 2
    assert (tmp_path / "run" / "fit_targets.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_exits_1_when_no_target_fits(tmp_path):
    result = _fit("--config", "v4-8", *SMALL, "--model_size", "8b", "--batch_size", "16",
                  "--targets", "v4-8,v5litepod-4", "--no_search", tmp_path=tmp_path)

    assert result.returncode == 1, failure_report(result)
    assert "Traceback" not in result.stderr
    saved = read_fit_json(tmp_path / "run")
    assert [row["verdict"] for row in saved["targets"]] == ["DOES NOT FIT", "DOES NOT FIT"]
    assert [row["usd_per_1000_steps"] for row in saved["targets"]] == [None, None]


@pytest.mark.parametrize("argv, message", [
    (["--targets", "v5litepod-16,v7-8"], "unknown TPU product or topology 'v7-8'"),
    (["--targets", "v5litepod-16,v5e-16"], "--targets needs distinct TPU products"),
    (["--targets", "v6e-8,v5litepod-16", "--batch_size", "24"],
     "--batch_size=24 is not divisible by the 16 devices of v5litepod-16"),
    (["--targets", "v6e-8", "--mfu", "2"], "--mfu must be in (0, 1], got 2"),
    (["--targets", "v6e-8", "--storage_mbps", "100", "--preflight_json", "x.json"], "give the write throughput once"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, message):
    from harness.fit import cli

    code = cli.main(["--config", "v5litepod-16", "--run_dir", str(tmp_path / "run"), *argv])

    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"harness-fit: error: {message}"), line
    assert not (tmp_path / "run").exists()
