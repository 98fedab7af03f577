"""`python -m harness.preflight`: the same entry point as `harness-preflight`."""

from harness.preflight.cli import run

run()
