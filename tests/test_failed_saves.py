"""The listener that hears orbax's background save failures (harness/runtime/failed_saves.py).

    .venv/bin/python -m pytest -q tests/test_failed_saves.py

The end-to-end case (a 2x4 pod whose save fails on one host) is the soak test
`tests/test_gcs_checkpoints.py::test_pod_whose_save_fails_on_one_host_ends_promptly`.
"""

from __future__ import annotations

import inspect
import logging

import pytest
from orbax.checkpoint._src.checkpointers import async_checkpointer

from harness.runtime.failed_saves import ORBAX_PATH_PART, FailedSaveListener


def _record(pathname: str, error: BaseException | None, level: int = logging.ERROR) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("absl", level, pathname, 1, "Failed to run commit", (), exc_info)


@pytest.fixture
def listener():
    attached = FailedSaveListener().attach()
    yield attached
    attached.detach()


def test_keeps_the_first_error_orbax_logs_with_an_exception(listener):
    first, second = ValueError("PERMISSION_DENIED: first"), ValueError("second")
    orbax_file = f"/venv/lib/python3.11/site-packages{ORBAX_PATH_PART}_src/checkpointers/async_checkpointer.py"

    logging.getLogger("absl").handle(_record(orbax_file, first))
    logging.getLogger("absl").handle(_record(orbax_file, second))

    assert listener.failure is first


@pytest.mark.parametrize("pathname, error, level", [
    ("/src/my_code.py", ValueError("not orbax"), logging.ERROR),
    (f"/site-packages{ORBAX_PATH_PART}x.py", None, logging.ERROR),              # no exception attached
    (f"/site-packages{ORBAX_PATH_PART}x.py", ValueError("a warning"), logging.WARNING),
])
def test_ignores_what_is_not_a_failed_orbax_save(listener, pathname, error, level):
    logging.getLogger("absl").handle(_record(pathname, error, level))

    assert listener.failure is None


def test_detached_it_hears_nothing():
    listener = FailedSaveListener().attach()
    listener.detach()
    logging.getLogger("absl").handle(_record(f"/x{ORBAX_PATH_PART}y.py", ValueError("late")))

    assert listener.failure is None


def test_the_pinned_orbax_still_logs_a_failed_background_save_with_its_exception():
    """The listener relies on orbax logging the failure at ERROR with `exc_info`, from its
    own file; if a new orbax stops doing so, this says where to look."""
    source = inspect.getsource(async_checkpointer)
    assert "in background save thread" in source and "logging.error(msg, exc_info=True)" in source, (
        "orbax's async checkpointer no longer logs a failed background save with "
        "exc_info; harness/runtime/failed_saves.py must find another way to hear about it")
    assert ORBAX_PATH_PART in inspect.getsourcefile(async_checkpointer)
