"""`python -m harness.train`: the same entry point as `harness-train`."""

from harness.train.cli import run

run()
