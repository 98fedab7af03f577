"""How the harness hears of a checkpoint save that failed in orbax's background thread
(harness/runtime/failed_saves.py): only this store's saves, never a restore error.

    .venv/bin/python -m pytest -q tests/test_failed_saves.py

The end-to-end case (a 2x4 pod whose save fails on one host) is the soak test
`tests/test_gcs_checkpoints.py::test_pod_whose_save_fails_on_one_host_ends_promptly`.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from typing import TYPE_CHECKING

import pytest
from orbax.checkpoint._src.checkpointers import async_checkpointer

from harness.runtime.failed_saves import FAILED_SAVE, ORBAX_PATH_PART, FailedSaveListener
from tests.support.deny_storage import deny_server
from tests.support.runs import REPO_ROOT, harness_env

if TYPE_CHECKING:
    from tests.support.gcs_emulator import GcsEmulator

pytest_plugins = ["tests.support.gcs_emulator"]  # the session's `gcs_emulator` fixture

STORE = "gs://bucket/run"
ORBAX_FILE = f"/venv/lib/python3.11/site-packages{ORBAX_PATH_PART}_src/checkpointers/async_checkpointer.py"
PROBE_TIMEOUT_S = 180


def _failed_save_message(directory: str) -> str:
    """orbax 0.12.8's message for a failed background save of `directory`."""
    return ("[process=0] Failed to run 2 Handler Commit operations or the Commit callback in background save "
            f"thread, directory: {directory}")


def _record(message: str, error: BaseException | None, *, pathname: str = ORBAX_FILE,
            level: int = logging.ERROR) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("absl", level, pathname, 1, message, (), exc_info)


@pytest.fixture
def listener():
    attached = FailedSaveListener(STORE).attach()
    yield attached
    attached.detach()


def test_keeps_the_first_failed_save_of_a_step_in_this_store(listener):
    first, second = ValueError("PERMISSION_DENIED: first"), ValueError("second")

    logging.getLogger("absl").handle(_record(_failed_save_message(f"{STORE}/4"), first))
    logging.getLogger("absl").handle(_record(_failed_save_message(f"{STORE}/8"), second))

    assert listener.failure is first


def test_a_local_store_hears_its_temporary_step_directory(tmp_path):
    listener = FailedSaveListener(str(tmp_path / "ckpt")).attach()
    try:
        error = OSError("No space left on device")
        logging.getLogger("absl").handle(
            _record(_failed_save_message(f"{tmp_path}/ckpt/4.orbax-checkpoint-tmp-1765000000"), error))
    finally:
        listener.detach()

    assert listener.failure is error


@pytest.mark.parametrize("record", [
    _record(_failed_save_message(f"{STORE}/4"), ValueError("not orbax"), pathname="/src/my_code.py"),
    _record(_failed_save_message(f"{STORE}/4"), None),                                  # no exception attached
    _record(_failed_save_message(f"{STORE}/4"), ValueError("a warning"), level=logging.WARNING),
    _record(_failed_save_message("gs://bucket/other_run/4"), ValueError("another store's save")),
    _record(_failed_save_message(f"{STORE}/nested/4"), ValueError("a store below this one")),
    _record("[process=0][thread=MainThread][operation_id=1] _SignalingThread.run() raised an exception: x",
            ValueError("DATA_LOSS: a restore's read")),                                # not a save's record
], ids=["not-orbax", "no-exception", "warning", "another-store", "nested-store", "restore-error"])
def test_ignores_what_is_not_a_failed_save_of_this_store(listener, record):
    logging.getLogger("absl").handle(record)

    assert listener.failure is None


def test_detached_it_hears_nothing():
    listener = FailedSaveListener(STORE).attach()
    listener.detach()
    logging.getLogger("absl").handle(_record(_failed_save_message(f"{STORE}/4"), ValueError("late")))

    assert listener.failure is None


def test_the_pinned_orbax_still_logs_a_failed_background_save_with_its_exception_and_directory():
    """The listener relies on orbax logging the failure at ERROR with `exc_info` and the
    step directory, from its own file; if a new orbax stops doing so, this says where to look."""
    source = inspect.getsource(async_checkpointer)
    assert "in background save thread, directory: {directory}" in source and \
        "logging.error(msg, exc_info=True)" in source, (
            "orbax's async checkpointer no longer logs a failed background save with its directory and "
            "exc_info; harness/runtime/failed_saves.py must find another way to hear about it")
    assert FAILED_SAVE.search(_failed_save_message(f"{STORE}/4")).group("directory") == f"{STORE}/4"
    assert ORBAX_PATH_PART in inspect.getsourcefile(async_checkpointer)


@pytest.fixture(scope="module")
def probe(gcs_emulator: GcsEmulator, tmp_path_factory) -> dict:
    """tests/support/failed_save_probe.py against the emulator, its array writes refused."""
    import subprocess

    with deny_server() as deny_url:
        env = harness_env(**gcs_emulator.env, PROBE_DENY_URL=deny_url,
                          XLA_FLAGS="--xla_force_host_platform_device_count=8")
        result = subprocess.run(
            [sys.executable, "-m", "tests.support.failed_save_probe", str(tmp_path_factory.mktemp("probe")),
             f"gs://{gcs_emulator.bucket}/failed_saves/probe"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.splitlines()[-1])


def test_a_real_failed_save_is_heard_at_once_and_raised_with_its_storage_error(probe):
    assert probe["heard_s"] is not None and probe["heard_s"] < 10, probe
    assert probe["raised"].startswith("host 0: a checkpoint save to gs://"), probe
    assert ": PERMISSION_DENIED: " in probe["raised"], probe


def test_neither_a_restore_error_nor_another_stores_failure_is_a_failed_save(probe):
    """The same process restored a torn local checkpoint (damage, skipped) and then had
    the gs:// store's save fail: the local stores' listeners heard nothing."""
    assert probe["restored_damaged"] is False and probe["damaged_steps"] == [1], probe
    assert probe["local_listeners"] == ["None", "None"], probe
