"""Run the real CLI in subprocesses, always with a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 240


def harness_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus device-count flags (the preset decides)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("WANDB_MODE", "disabled")
    env.update(extra)
    return env


def run_harness(args: list[str], *, timeout: float = DEFAULT_TIMEOUT_S, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """`python -m harness.train ARGS`, captured; raises on timeout (never hangs)."""
    return subprocess.run(
        [sys.executable, "-m", "harness.train", *args],
        cwd=REPO_ROOT, env=env or harness_env(), capture_output=True, text=True, timeout=timeout,
    )
