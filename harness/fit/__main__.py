"""`python -m harness.fit`: the same entry point as `harness-fit`."""

from harness.fit.cli import run

run()
