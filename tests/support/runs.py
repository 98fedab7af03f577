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


def compile_cache_env(cache_dir: Path) -> dict[str, str]:
    """Environment for a persistent JAX compilation cache shared by a test's runs.

    Runs of the same config then compile their jitted init and step once instead of
    once per process (on 2 CPU cores: ~7 s -> ~3 s of CPU per smoke run). A cache hit
    returns the same executable, so results are unchanged.
    """
    return {
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def run_harness(args: list[str], *, timeout: float = DEFAULT_TIMEOUT_S, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """`python -m harness.train ARGS`, captured; raises on timeout (never hangs)."""
    return subprocess.run(
        [sys.executable, "-m", "harness.train", *args],
        cwd=REPO_ROOT, env=env or harness_env(), capture_output=True, text=True, timeout=timeout,
    )


def start_harness(args: list[str], *, log_path: Path, env: dict[str, str] | None = None,
                  ) -> subprocess.Popen[bytes]:
    """`python -m harness.train ARGS` in the background, stdout+stderr to `log_path`.

    The caller must wait on it with a timeout (or kill it); a file, not a pipe, so a
    chatty run can never block on a full pipe buffer.
    """
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.train", *args],
            cwd=REPO_ROOT, env=env or harness_env(), stdout=log, stderr=subprocess.STDOUT,
        )


def launch_local(num_processes: int, devices_per_process: int, command: list[str], *, timeout: float,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m launch.local ... -- COMMAND`, captured. The launcher gets `--timeout`
    `timeout` (it then kills every host and exits 124); this call waits 30 s longer and
    raises if even the launcher hangs."""
    return subprocess.run(
        [sys.executable, "-m", "launch.local", "--num_processes", str(num_processes),
         "--devices_per_process", str(devices_per_process), "--timeout", str(timeout), "--", *command],
        cwd=REPO_ROOT, env=env or harness_env(), capture_output=True, text=True, timeout=timeout + 30,
    )


def host_lines(output: str, host: int) -> list[str]:
    """The lines host `host` printed under the launcher, without the `[host i] ` prefix."""
    prefix = f"[host {host}] "
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (itself included) -> sha256 of its bytes, or 'dir'.

    Equal snapshots before and after a command mean it changed nothing there; a missing
    root gives {}.
    """
    import hashlib

    if not root.exists():
        return {}
    paths = [root, *sorted(root.rglob("*"))]
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in paths
    }
