"""Damaged checkpoints through the real CLI: `--resume` reports them, sets them aside (a
DAMAGED marker in the step; nothing renamed, moved or deleted, never pruned, never saved
over) and continues bit for bit from the newest valid step; later runs skip a marked step
unread; with no valid step it changes nothing unless `--allow_fresh_start`; a run killed
during an async save resumes from a committed step, never from the half-written one.
Failures that prove no damage (storage down, out of memory) are tests/test_resume_faults.py.

    .venv/bin/python -m pytest -q tests/test_damaged_checkpoints.py
    .venv/bin/python -m pytest -q -m soak tests/test_damaged_checkpoints.py   # many kill points
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from functools import partial
from pathlib import Path

import pytest

from harness.runtime.checkpoint import existing_steps
from harness.runtime.damage import MARKER
from harness.outputs.sinks import read_metrics
from tests.support.argv import train_args
from tests.support.runs import (
    copy_run, failure_report, run_harness, sigkill_when, start_harness, tree_snapshot, uninterrupted_rows,
)

RUN_TIMEOUT_S = 240
ORBAX_TMP = ".orbax-checkpoint-tmp"


_args = partial(train_args, log_interval=1)


def _tear_array_data(step_dir: Path) -> None:
    """Cuts every array data file of a step's `state/` in half (torn writes). Every one:
    an OCDBT data file can end in bytes nothing references any more (superseded b-tree
    nodes), so a step with one torn file may still restore bit for bit."""
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files, f"no array data under {step_dir}"
    for path in data_files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _marked(ckpt: Path) -> dict[int, str]:
    """Step -> the text of its DAMAGED marker."""
    return {int(child.name): (child / MARKER).read_text() for child in ckpt.iterdir()
            if child.name.isdigit() and (child / MARKER).exists()}


def _without_marker(snapshot: dict[str, str]) -> dict[str, str]:
    return {path: digest for path, digest in snapshot.items() if path != MARKER}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, cache) -> Path:
    """An uninterrupted 12-step run with checkpoints at 4, 8 and 12, every step logged."""
    root = tmp_path_factory.mktemp("pristine")
    result = run_harness(_args(root, cache, "--num_train_steps", "12", "--save_interval", "4", "--keep", "5"),
                         timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, failure_report(result)
    assert existing_steps(str(root / "ckpt")) == [4, 8, 12]
    assert [row["step"] for row in read_metrics(root / "run" / "metrics.jsonl")] == list(range(12))
    return root


# ---------------------------------------------------------------------------------------
# Newer steps damaged: resume from the newest valid one.

@pytest.fixture(scope="module")
def partly_damaged(pristine, tmp_path_factory, cache):
    """A copy of the pristine run with step 12's data torn and step 8's commit marker
    gone, then `--resume` to 16 keeping one checkpoint."""
    root = copy_run(pristine, tmp_path_factory.mktemp("partly_damaged"))
    ckpt = root / "ckpt"
    _tear_array_data(ckpt / "12")
    (ckpt / "8" / "commit_success.txt").unlink()
    damaged = {step: tree_snapshot(ckpt / str(step)) for step in (12, 8)}
    result = run_harness(_args(root, cache, "--num_train_steps", "16", "--save_interval", "4", "--keep", "1",
                               "--resume"), timeout=RUN_TIMEOUT_S)
    return root, result, damaged


def test_resume_reports_each_damaged_step_and_resumes_from_the_newest_valid_one(partly_damaged):
    root, result, _ = partly_damaged
    ckpt = root / "ckpt"
    lines = result.stdout.splitlines()

    assert result.returncode == 0, failure_report(result)
    warnings = [line for line in lines if line.startswith("WARNING: checkpoint step")]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("WARNING: checkpoint step 12 is damaged (arrays unreadable: ValueError: ")
    assert warnings[0].endswith("); trying an older one")
    assert warnings[1] == ("WARNING: checkpoint step 8 is damaged (incomplete: no commit_success.txt); "
                           "trying an older one")
    assert "Resumed from checkpoint at step 4 (newer damaged steps skipped: 12, 8)" in lines
    assert (f"WARNING: no checkpoint will be saved at step 8, 12: damaged checkpoints hold those steps in {ckpt} "
            "(delete them to free the steps)") in lines
    assert "Training complete!" in lines
    assert result.stderr == "", f"a successful fallback printed on stderr:\n{result.stderr}"


def test_damaged_steps_are_marked_in_place_with_their_contents_untouched(partly_damaged):
    root, result, damaged = partly_damaged
    ckpt = root / "ckpt"

    marked = _marked(ckpt)

    assert sorted(marked) == [8, 12], sorted(os.listdir(ckpt))
    assert "arrays unreadable: ValueError: " in marked[12]
    assert marked[8].endswith(" incomplete: no commit_success.txt\n"), marked[8]
    for step in (8, 12):
        assert _without_marker(tree_snapshot(ckpt / str(step))) == damaged[step], f"step {step}'s files changed"
        assert (f"WARNING: damaged checkpoint set aside (kept, never restored or saved over): "
                f"{ckpt / str(step) / MARKER}") in result.stdout.splitlines()


def test_marked_steps_are_neither_pruned_nor_counted_against_keep(partly_damaged):
    """--keep 1 after a resume from 4 past marked 8 and 12: the run saves only 16 (8 and 12
    stay taken), orbax prunes 4, and keeps both marked steps, which do not count."""
    root, result, _ = partly_damaged

    assert result.returncode == 0, failure_report(result)
    assert sorted(os.listdir(root / "ckpt"), key=int) == ["8", "12", "16"]
    assert "  Checkpoints written: 16 in " + str(root / "ckpt") in result.stdout.splitlines()


def test_run_resumed_past_damaged_steps_logs_the_uninterrupted_metrics(partly_damaged, pristine):
    root, result, _ = partly_damaged

    assert result.returncode == 0, failure_report(result)
    rows = read_metrics(root / "run" / "metrics.jsonl")
    # Rows 0-3 kept from before, 4-11 recomputed from step 4: exactly the pristine run's.
    assert rows[:12] == read_metrics(pristine / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(16))


# ---------------------------------------------------------------------------------------
# Every step damaged: refuse and change nothing, or start over when asked to.

@pytest.fixture(scope="module")
def all_damaged(pristine, tmp_path_factory, cache):
    """A copy with step 12 torn, 8 without its marker and 4 without its metadata item;
    `--resume` (refused), then `--resume --allow_fresh_start` for 4 steps."""
    root = copy_run(pristine, tmp_path_factory.mktemp("all_damaged"))
    ckpt = root / "ckpt"
    _tear_array_data(ckpt / "12")
    (ckpt / "8" / "commit_success.txt").unlink()
    shutil.rmtree(ckpt / "4" / "meta")
    before = tree_snapshot(root)
    damaged = {step: tree_snapshot(ckpt / str(step)) for step in (4, 8, 12)}
    args = _args(root, cache, "--num_train_steps", "4", "--save_interval", "4", "--keep", "5", "--resume")

    refused = run_harness(args, timeout=RUN_TIMEOUT_S)
    after_refusal = tree_snapshot(root)
    fresh = run_harness([*args, "--allow_fresh_start"], timeout=RUN_TIMEOUT_S)
    return root, before, after_refusal, damaged, refused, fresh


def test_resume_with_only_damaged_steps_fails_naming_them_and_changes_nothing(all_damaged):
    root, before, after_refusal, _, refused, _ = all_damaged

    assert refused.returncode == 2, failure_report(refused)
    assert (f"harness-train: error: no valid checkpoint in {root / 'ckpt'} (damaged: steps 12, 8, 4); "
            "nothing was changed. Pass --allow_fresh_start") in refused.stderr, failure_report(refused)
    # Checkpoints, metrics, everything under the run's root: byte for byte as before.
    changed = sorted(path for path in before.keys() | after_refusal.keys()
                     if before.get(path) != after_refusal.get(path))
    assert changed == [], f"changed by the refused run: {changed}"


def test_resume_with_only_damaged_steps_says_so_in_one_stderr_line(all_damaged):
    _, _, _, _, refused, _ = all_damaged

    assert refused.returncode == 2, failure_report(refused)
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness-train: error: no valid checkpoint in "), \
        f"stderr is not one error line:\n{refused.stderr}"


def test_allow_fresh_start_starts_at_0_and_marks_the_damaged_steps_in_place(all_damaged, pristine):
    root, _, _, damaged, _, fresh = all_damaged
    ckpt = root / "ckpt"
    lines = fresh.stdout.splitlines()

    assert fresh.returncode == 0, failure_report(fresh)
    assert "No valid checkpoint to resume from: starting at step 0" in lines
    assert (f"WARNING: no checkpoint will be saved at step 4: damaged checkpoints hold those steps in {ckpt} "
            "(delete them to free the steps)") in lines
    assert sorted(_marked(ckpt)) == [4, 8, 12]
    for step in (4, 8, 12):
        assert _without_marker(tree_snapshot(ckpt / str(step))) == damaged[step], f"step {step}'s files changed"
    assert sorted(os.listdir(ckpt), key=int) == ["4", "8", "12"]  # nothing renamed, nothing saved over
    assert read_metrics(root / "run" / "metrics.jsonl") == read_metrics(pristine / "run" / "metrics.jsonl")[:4]


# ---------------------------------------------------------------------------------------
# Corruption: one flipped byte in each array data file is proven damage.

def _reason(warning: str) -> str:
    """What a `WARNING: checkpoint step N is damaged (...); trying an older one` line gives as the reason."""
    return warning.split(" is damaged (", 1)[1].removesuffix("); trying an older one")


def _flip_one_byte_in_every_data_file(step_dir: Path) -> None:
    """XORs the middle byte of each array data file. tensorstore's OCDBT layer reports
    it (DATA_LOSS); where a storage layer reads such bytes back without complaint, the
    harness's own checksums catch it (tests/test_integrity.py)."""
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files, f"no array data under {step_dir}"
    for path in data_files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def flipped(pristine, tmp_path_factory, cache):
    """Step 12 flipped, `--resume` (marks it); then its arrays are deleted and `--resume`
    runs again, which must pass the marked step over without reading it."""
    root = copy_run(pristine, tmp_path_factory.mktemp("flipped"))
    _flip_one_byte_in_every_data_file(root / "ckpt" / "12")
    args = _args(root, cache, "--num_train_steps", "12", "--save_interval", "4", "--keep", "5", "--resume")
    result = run_harness(args, timeout=RUN_TIMEOUT_S)
    shutil.rmtree(root / "ckpt" / "12" / "state")
    again = run_harness(args, timeout=RUN_TIMEOUT_S)
    return root, result, again


def test_a_flipped_byte_in_array_data_is_reported_as_damage(flipped):
    root, result, _ = flipped

    assert result.returncode == 0, failure_report(result)
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARNING: checkpoint step")]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: checkpoint step 12 is damaged ("), warnings
    assert "Resumed from checkpoint at step 8 (newer damaged steps skipped: 12)" in result.stdout.splitlines()
    assert _reason(warnings[0]) in _marked(root / "ckpt")[12]
    assert result.stderr == "", f"a successful fallback printed on stderr:\n{result.stderr}"


def test_a_later_resume_passes_a_marked_step_over_unread(flipped):
    _, first, again = flipped
    lines = again.stdout.splitlines()
    first_warning = [line for line in first.stdout.splitlines() if line.startswith("WARNING: checkpoint step")][0]

    assert again.returncode == 0, failure_report(again)
    warnings = [line for line in lines if line.startswith("WARNING: checkpoint step")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("WARNING: checkpoint step 12 is damaged (marked by an earlier run: "), warnings
    assert _reason(warnings[0]).endswith(_reason(first_warning))  # the recorded reason, not "incomplete: no state"
    assert not [line for line in lines if "set aside" in line], "a marked step was marked again"
    assert "Resumed from checkpoint at step 8 (newer damaged steps skipped: 12)" in lines


def test_a_run_resumed_past_a_flipped_byte_logs_the_uninterrupted_metrics(flipped, pristine):
    root, result, _ = flipped

    assert result.returncode == 0, failure_report(result)
    assert (root / "run" / "metrics.jsonl").read_text() == (pristine / "run" / "metrics.jsonl").read_text()


# ---------------------------------------------------------------------------------------
# Other settings are a usage error, never damage: nothing is renamed, even when asked to
# start fresh.

@pytest.mark.parametrize("change, field", [(("--hidden_dim", "64"), "hidden_dim: checkpoint 32 vs now 64"),
                                           (("--num_layers", "3"), "num_layers: checkpoint 2 vs now 3"),
                                           (("--model", "transformer", "--model_size", "tiny"),
                                            "model: checkpoint 'mlp' vs now 'transformer'; "
                                            "model_size: checkpoint '' vs now 'tiny'")])
@pytest.mark.parametrize("fresh", [(), ("--allow_fresh_start",)], ids=["resume", "allow_fresh_start"])
def test_resume_with_other_model_shapes_names_the_setting_and_renames_nothing(
        change, field, fresh, pristine, tmp_path, cache):
    root = copy_run(pristine, tmp_path / "copy")
    before = tree_snapshot(root)

    result = run_harness(_args(root, cache, "--num_train_steps", "16", "--resume", *change, *fresh),
                         timeout=RUN_TIMEOUT_S)

    assert result.returncode == 2, failure_report(result)
    assert result.stderr.splitlines() == [
        f"harness-train: error: cannot resume from {root / 'ckpt'} step 12: settings differ ({field})"
    ], failure_report(result)
    assert tree_snapshot(root) == before


# ---------------------------------------------------------------------------------------
# SIGKILL while an async save is being written.

def _kill_during_a_save(root: Path, cache: list[str], *, delay_s: float | None,
                        ) -> tuple[list[int], list[str], str]:
    """Starts a long run saving every 2 steps and SIGKILLs it: once a save is in flight
    (an orbax tmp dir is there) after one has committed, or `delay_s` after the first
    logged step. Returns the committed steps, the tmp dirs left and the run's log."""
    ckpt, log = root / "ckpt", root / "killed.log"
    first_step_at: list[float] = []

    def ready() -> bool:
        if delay_s is None:  # a committed step exists, so the first step was logged
            return bool(existing_steps(str(ckpt))) and any(ORBAX_TMP in name for name in os.listdir(ckpt))
        if not first_step_at and re.search(r"^Step +\d+:", log.read_text(errors="replace"), re.MULTILINE):
            first_step_at.append(time.monotonic())
        return bool(first_step_at) and time.monotonic() - first_step_at[0] >= delay_s

    process = start_harness(_args(root, cache, "--num_train_steps", "400", "--save_interval", "2", "--keep", "3",
                                  "--no_hard_examples"), log_path=log)
    sigkill_when(process, ready, log_path=log, timeout=RUN_TIMEOUT_S, poll_s=0.002)
    left = sorted(name for name in os.listdir(ckpt) if ORBAX_TMP in name) if ckpt.exists() else []
    return existing_steps(str(ckpt)), left, log.read_text()


def _resume_after_kill(root: Path, cache: list[str], tmp_path_factory, committed: list[int], left: list[str]):
    """`--resume` must start from the newest committed step (0 if none) and then log
    exactly the uninterrupted run's metrics."""
    start = max(committed, default=0)
    result = run_harness(_args(root, cache, "--num_train_steps", str(start + 4), "--save_interval", "2",
                               "--keep", "3", "--no_hard_examples", "--resume"), timeout=RUN_TIMEOUT_S)
    context = f"committed at kill {committed}, tmp dirs left {left}\n{failure_report(result)}"

    assert result.returncode == 0, context
    expected_line = f"Resumed from checkpoint at step {start}" if start else \
        "No valid checkpoint to resume from: starting at step 0"
    assert expected_line in result.stdout.splitlines(), context
    reference = uninterrupted_rows("1x8", start + 4, workdir=tmp_path_factory.mktemp("reference"),
                                   extra_args=tuple(cache))
    assert read_metrics(root / "run" / "metrics.jsonl") == reference, context


def test_sigkill_during_an_async_save_resumes_from_the_last_committed_step(tmp_path, tmp_path_factory, cache):
    committed, left, log = _kill_during_a_save(tmp_path, cache, delay_s=None)

    assert committed, log
    _resume_after_kill(tmp_path, cache, tmp_path_factory, committed, left)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(8))
def test_sigkill_at_a_random_point_then_resume_never_fails(seed, tmp_path, tmp_path_factory, cache):
    delay_s = random.Random(seed).uniform(0.0, 2.0)

    committed, left, _ = _kill_during_a_save(tmp_path, cache, delay_s=delay_s)

    _resume_after_kill(tmp_path, cache, tmp_path_factory, committed, left)


def test_noise_filters_drop_only_orbax_failed_restore_after_effects(monkeypatch):
    """The filters behind the one-line error drop exactly the late read errors of a
    failed restore; any other unraisable error or asyncio log record passes through."""
    import logging
    import sys

    from harness.runtime import quiet

    passed_on = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: passed_on.append(u.exc_value))
    asyncio_logger = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_logger, "filters", list(asyncio_logger.filters))
    quiet.quiet_reads_of_failed_restores()
    quiet.quiet_reads_of_failed_restores()  # idempotent: installed once

    class Unraisable:
        def __init__(self, value):
            self.exc_value = value

    other = RuntimeError("something else")
    sys.unraisablehook(Unraisable(RuntimeError("Event loop is closed")))
    sys.unraisablehook(Unraisable(other))
    assert passed_on == [other]

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, "", 0, message, None, None)

    orphan = record("Task exception was never retrieved\nfuture: <Task coro=<async_deserialize() done>>")
    unrelated = record("Task exception was never retrieved\nfuture: <Task coro=<train_step() done>>")
    assert not asyncio_logger.filter(orphan) and asyncio_logger.filter(unrelated)
    assert asyncio_logger.filters.count(quiet.drop_orphaned_restore_reads) == 1
