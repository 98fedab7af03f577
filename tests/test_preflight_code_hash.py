"""Preflight's code consistency: every file the run can execute is hashed, and a host
whose files differ is named with the files to sync.

The fault is made the way a pod makes it: host 1 of a real 2-process preflight
(launch.local, jax.distributed over gloo) runs from a copy of the tree in which
harness/train/loop.py gained one comment line, a module preflight never imports itself.

    .venv/bin/python -m pytest -q tests/test_preflight_code_hash.py
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from harness.preflight import code_tree, consistency
from harness.preflight.results import FAIL, PASS, HostReport
from tests.support.runs import REPO_ROOT, compile_cache_flags, failure_report, harness_env, host_lines, launch_local

POD_TIMEOUT_S = 180
TREE = ("harness", "launch", "configs", "setup.cfg")


def copy_of_the_tree(destination: Path) -> Path:
    """What a host with an older checkout has on disk: the repository's code, copied."""
    destination.mkdir()
    for name in TREE:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / name)
    return destination


def test_a_host_running_a_changed_copy_of_the_tree_is_named_with_the_file(tmp_path: Path) -> None:
    copy = copy_of_the_tree(tmp_path / "older-checkout")
    with (copy / "harness" / "train" / "loop.py").open("a") as loop:
        loop.write("# a line the other host does not have\n")
    preflight = shlex.join([sys.executable, "-m", "harness.preflight", "--config", "local-2x4",
                            "--run_dir", str(tmp_path / "run"), "--checkpoint_dir", str(tmp_path / "ckpt"),
                            "--checks", "consistency", *compile_cache_flags(tmp_path / "cache")])
    where = shlex.join([sys.executable, "-c", "import harness; print('harness from', harness.__file__)"])
    script = (f'if [ "$HARNESS_PROCESS_ID" = 1 ]; then cd {shlex.quote(str(copy))}; '
              f'export PYTHONPATH={shlex.quote(str(copy))}; fi; {where} && exec {preflight}')
    result = launch_local(2, 4, ["sh", "-c", script], timeout=POD_TIMEOUT_S, env=harness_env())
    assert result.returncode == 1, failure_report(result)
    assert f"harness from {REPO_ROOT / 'harness' / '__init__.py'}" in host_lines(result.stdout, 0)
    assert f"harness from {copy / 'harness' / '__init__.py'}" in host_lines(result.stdout, 1)
    report = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert [(f["check"], f["host"]) for f in report["failures"]] == [("consistency", 1)], report["failures"]
    failure = report["failures"][0]
    assert failure["value"] == "code differs from the pod's in harness/train/loop.py", failure
    assert "harness/train/loop.py" in failure["detail"]
    assert ("harness-preflight: FAIL: host 1: consistency: code differs from the pod's in harness/train/loop.py"
            in result.stdout), failure_report(result)
