"""Every benchmark runs: each bench/ script at its tiny size (seconds), exit 0, with its
RESULT line and the line a reader looks at. The scripts are found on disk, so a new
benchmark is covered without being listed here.

    .venv/bin/python -m pytest -q tests/test_bench.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import run_all
from bench.common import HELPERS, benchmarks, tiny_args
from tests.support.runs import REPO_ROOT, failure_report, harness_env

ON_DISK = sorted(f"bench.{path.stem}" for path in (REPO_ROOT / "bench").glob("*.py") if path.stem not in HELPERS)
# The human-readable line each benchmark prints besides RESULT (a table row, or its ratios).
READABLE = {
    "bench.checkpoint_stall": "async checkpoint stall / sync save: ",
    "bench.fit_cost": "| tiny | v4-8 | 4 | 64 | ",
    "bench.hard_examples": "tracking: ",
    "bench.preflight_cost": "preflight 2 host(s): ",
    "bench.process_cost": "warm_cache_over_bare_jax: ",
    "bench.step_overhead": "harness step / bare jitted step (8 fake devices, batch 16): ",
}
TIMEOUT_S = 300


def test_the_runner_and_the_suite_see_the_same_benchmarks():
    assert benchmarks() == ON_DISK and len(ON_DISK) >= 6
    assert set(run_all.FULL_ARGS) <= set(ON_DISK)


@pytest.mark.parametrize("module", ON_DISK)
def test_each_benchmark_runs_at_its_tiny_size(module: str, tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", module, *tiny_args(module)], cwd=REPO_ROOT,
                            env=harness_env(WANDB_DIR=str(tmp_path), WANDB_DATA_DIR=str(tmp_path)),
                            capture_output=True, text=True, timeout=TIMEOUT_S)

    assert result.returncode == 0, failure_report(result)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    measured = json.loads(line.removeprefix("RESULT "))
    assert list(measured) == [module.removeprefix("bench.")] and measured[module.removeprefix("bench.")]
    if module in READABLE:
        assert any(line.startswith(READABLE[module]) for line in result.stdout.splitlines()), result.stdout[-3000:]
