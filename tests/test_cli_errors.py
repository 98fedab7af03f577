"""Bad input through the real CLI: exit code 2, one line on stderr, nothing written.

Each bad command runs against the checkpoint and run dirs of a real (tiny) run, whose
files must come out byte for byte the same; a few also run against fresh paths, which
must not be created.

    .venv/bin/python -m pytest -q tests/test_cli_errors.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.runtime import distributed
from harness.runtime.checkpoint import existing_steps
from harness.config import available_presets
from tests.support.runs import harness_env, run_harness, tree_snapshot

TIMEOUT_S = 120
PREFIX = "harness-train: error: "


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    env = harness_env()
    for name in (distributed.ENV_ADDRESS, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def existing(tmp_path_factory, env, cache) -> Path:
    """A finished 2-step smoke run: `ckpt/` holds a real checkpoint, `run/` its metrics."""
    root = tmp_path_factory.mktemp("existing")
    result = run_harness(["--config", "smoke", *cache, "--num_train_steps", "2", "--no_hard_examples", "--no_wandb",
                          "--checkpoint_dir", str(root / "ckpt"), "--run_dir", str(root / "run")],
                         timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert existing_steps(str(root / "ckpt")) == [2]
    return root


@pytest.fixture(scope="module")
def bad_preset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("presets") / "typo.toml"
    path.write_text('base = "smoke"\n[data]\nbatch_sise = 32\n')
    return path


def _cases(bad_preset: Path, unwritable: Path) -> dict[str, tuple[list[str], str]]:
    """Case name -> (flags after `--config smoke --resume`, the exact stderr line)."""
    return {
        "batch_not_divisible": (["--batch_size", "12"], "--batch_size=12 is not divisible by the 8 devices"),
        "fsdp_3": (["--fsdp_devices", "3"], "--fsdp_devices=3 does not divide the 8 devices"),
        "steps_0": (["--num_train_steps", "0"], "--num_train_steps must be positive, got 0"),
        "steps_negative": (["--num_train_steps", "-5"], "--num_train_steps must be positive, got -5"),
        "steps_not_int": (["--num_train_steps", "ten"], "argument --num_train_steps/--run.num_train_steps: invalid int value: 'ten'"),
        "unknown_preset": (["--config", "nope"],
                           f"unknown preset 'nope' (available: {', '.join(available_presets())})"),
        "unknown_flag": (["--bogus_flag", "1"], "unrecognized arguments: --bogus_flag 1"),
        "preset_unknown_key": (["--config", str(bad_preset)], f"{bad_preset}: unknown config key(s): data.batch_sise"),
        "resume_and_overwrite": (["--overwrite"], "--resume and --overwrite contradict each other: pick one"),
        "partial_coordinates": (
            ["--coordinator_address", "127.0.0.1:1234"],
            "distributed start needs coordinator_address, num_processes and process_id; missing: "
            "num_processes, process_id (flags or HARNESS_COORDINATOR_ADDRESS/HARNESS_NUM_PROCESSES/"
            "HARNESS_PROCESS_ID)",
        ),
        "process_id_out_of_range": (
            ["--coordinator_address", "127.0.0.1:1234", "--num_processes", "2", "--process_id", "2"],
            "process_id must be in [0, 2) and num_processes >= 1, got 2 of 2",
        ),
        "unwritable_checkpoint_dir": (["--checkpoint_dir", str(unwritable)],
                                      f"checkpoint dir {unwritable}: {unwritable.parent} is not a directory"),
        "empty_checkpoint_dir": (["--checkpoint_dir", ""], "--checkpoint_dir must not be empty"),
        "model_path_fails": (["--model", "nope.mod:make"],
                             "--model nope.mod:make: cannot import nope.mod (ModuleNotFoundError: No module named 'nope')"),
        "run_dir_is_a_file": (["--run_dir", str(unwritable.parent)],
                              f"run dir {unwritable.parent}: {unwritable.parent} is not a directory"),
        "batch_never_fits": (
            ["--batch_size", "1048576"],
            "--batch_size=1048576 needs ~{needed} of host memory for its batches ({per_batch} per host batch, "
            "2 steps in flight), more than half of the {available} available",
        ),
    }


CASES = list(_cases(Path("typo.toml"), Path("file.txt/ckpt")))


def _check_one_line(result, expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    if "{needed}" in expected:  # the memory figures depend on the machine: check the shape
        pattern = re.escape(PREFIX + expected).replace(r"\{needed\}", r"[\d.]+ [KMGT]iB") \
            .replace(r"\{per_batch\}", r"[\d.]+ GiB").replace(r"\{available\}", r"[\d.]+ [KMGT]iB")
        assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), lines
        return
    assert lines == [PREFIX + expected]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_leaves_an_existing_run_alone(
        case, existing, bad_preset, tmp_path, env, cache):
    file = tmp_path / "file.txt"
    file.write_text("not a directory\n")
    unwritable = file / "ckpt"
    extra, expected = _cases(bad_preset, unwritable)[case]
    before, file_before = tree_snapshot(existing), tree_snapshot(tmp_path)

    result = run_harness(
        ["--config", "smoke", *cache, "--resume", "--checkpoint_dir", str(existing / "ckpt"),
         "--run_dir", str(existing / "run"), *extra],
        timeout=TIMEOUT_S, env=env,
    )

    _check_one_line(result, expected)
    assert tree_snapshot(existing) == before
    assert tree_snapshot(tmp_path) == file_before


@pytest.mark.parametrize("case", ["batch_not_divisible", "fsdp_3", "steps_0", "partial_coordinates",
                                  "unwritable_checkpoint_dir", "empty_checkpoint_dir", "batch_never_fits"])
def test_bad_input_creates_no_directories(case, bad_preset, tmp_path, env, cache):
    file = tmp_path / "file.txt"
    file.write_text("not a directory\n")
    unwritable = file / "ckpt"
    extra, expected = _cases(bad_preset, unwritable)[case]

    result = run_harness(
        ["--config", "smoke", *cache, "--checkpoint_dir", str(tmp_path / "new" / "ckpt"),
         "--run_dir", str(tmp_path / "new" / "run"), *extra],
        timeout=TIMEOUT_S, env=env,
    )

    _check_one_line(result, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_existing_checkpoints_without_resume_or_overwrite_are_refused(existing, tmp_path, env, cache):
    before = tree_snapshot(existing)

    result = run_harness(["--config", "smoke", *cache, "--checkpoint_dir", str(existing / "ckpt"),
                          "--run_dir", str(tmp_path / "run")], timeout=TIMEOUT_S, env=env)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        PREFIX + f"{existing / 'ckpt'} already holds checkpoints (latest step 2): "
        "pass --resume to continue or --overwrite to start over"
    ]
    assert tree_snapshot(existing) == before
    assert not (tmp_path / "run").exists()
