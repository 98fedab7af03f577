"""One-line error text (harness/errors.py), the one place every message takes it from.

    .venv/bin/python -m pytest -q tests/test_errors.py
"""

from __future__ import annotations

import pytest

from harness.errors import UsageError, error_line, first_line, report_error


def test_first_line_is_the_first_non_blank_line_cut_at_the_limit_or_the_type() -> None:
    assert first_line(OSError("\n  disk full\nerrno 28\n")) == "disk full"
    assert first_line(ValueError("x" * 400)) == "x" * 300
    assert first_line(ValueError("abcdef"), limit=3) == "abc"
    assert first_line(TimeoutError()) == "TimeoutError"


def test_error_line_names_the_type_before_the_first_line() -> None:
    assert error_line(OSError("\n  disk full\nerrno 28\n")) == "OSError: disk full"
    assert error_line(ValueError("y" * 400), 200) == "ValueError: " + "y" * 200
    assert error_line(TimeoutError()) == "TimeoutError"
    assert error_line(RuntimeError("   \n ")) == "RuntimeError"


def test_report_error_prints_the_one_line_and_gives_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_error("harness-fit", UsageError("--batch_size must be positive, got 0")) == 2
    assert capsys.readouterr() == ("", "harness-fit: error: --batch_size must be positive, got 0\n")
