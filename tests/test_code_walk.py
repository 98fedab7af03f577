"""The walk (bench/code_walk.py): argv's route from harness/train/cli.py:main climbs
back up at most 12 times (issue 19), measured on a real smoke run; and the counting
itself, on a route written by hand.

    .venv/bin/python -m pytest -q tests/test_code_walk.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.code_walk import Read, Walk
from tests.support.runs import REPO_ROOT, failure_report, harness_env

MAX_CLIMBS = 12
TIMEOUT_S = 300


def test_counting_on_a_route_written_by_hand():
    reads = [Read("train/cli", "main", False), Read("train/startup", "start", False),
             Read("runtime/devices", "configure", False), Read("train/startup", "_check", True),
             Read("train/startup", "_check_more", False), Read("train/loop", "train", False),
             Read("runtime/devices", "count", False)]

    summary = Walk(reads).summary()

    assert summary == {"rooms": 4, "stays": 6, "climbs": 1, "functions": 7,
                       "reentries": {"train/startup": 1, "runtime/devices": 1},
                       "route": ["train/cli", "train/startup", "runtime/devices", "^train/startup", "train/loop",
                                 "runtime/devices"]}


def test_the_smoke_route_reads_top_down(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "bench.code_walk", "--json"], cwd=REPO_ROOT,
                          env=harness_env(WANDB_DIR=str(tmp_path), WANDB_DATA_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, failure_report(done)
    walk = json.loads(done.stdout)

    assert walk["climbs"] <= MAX_CLIMBS, "\n".join(walk["route"])
    functions = [(read["module"], read["function"]) for read in walk["reads"]]
    assert functions[0] == ("train/cli", "main")
    assert functions.index(("train/startup", "start_runtime")) < functions.index(("train/loop", "train")) \
        < functions.index(("train/loop", "_run_steps"))
    assert walk["reentries"].get("train/loop", 0) <= 1
