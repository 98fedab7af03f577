"""Shared benchmark helpers: which scripts are benchmarks, child-process measurement,
and the real training run's steady-state step time."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
# bench/*.py files that are not benchmarks: this module, the runner, one host of
# hard_examples' multi-process gather, and the code walk (a route through the code, not a
# cost; tests/test_code_walk.py runs it). Every other script is one, and takes --tiny.
HELPERS = frozenset({"__init__", "code_walk", "common", "gather_bytes", "run_all"})
# Arguments for a benchmark's short run where it is not `--tiny`: checkpoint_stall is
# maintained beside the checksum code and has no --tiny; one round is its short run.
SHORT_RUN_ARGS = {"checkpoint_stall": ("--repeats", "1")}


def benchmarks() -> list[str]:
    """Every benchmark's module name (`bench.step_overhead`, ...), from the files on disk."""
    return sorted(f"bench.{path.stem}" for path in BENCH_DIR.glob("*.py") if path.stem not in HELPERS)


def tiny_args(module: str) -> tuple[str, ...]:
    """The arguments that make `module` run at its tiny size (seconds, numbers meaningless)."""
    return SHORT_RUN_ARGS.get(module.removeprefix("bench."), ("--tiny",))


def median(values: list[float]) -> float:
    return statistics.median(values)


class Measured(NamedTuple):
    wall_s: float
    peak_rss_mb: float
    exit_code: int
    stderr_tail: str


def run_measured(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
                 ok_codes: tuple[int, ...] = (0,)) -> Measured:
    """One child process run to completion: its wall time, peak RSS (wait4's rusage of
    that child alone), exit code and the end of its stderr; an exit code outside
    `ok_codes` raises. stderr goes to a file, so a chatty child never blocks on a pipe."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(f"{argv} ran past {timeout} s")
            time.sleep(0.01)
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace")[-2000:]
    measured = Measured(time.perf_counter() - started, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status),
                        tail)
    if measured.exit_code not in ok_codes:
        raise RuntimeError(f"{argv} exited {measured.exit_code}: {tail}")
    return measured


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env.update(extra)
    return env


def python() -> str:
    return sys.executable


def trainer_seconds_per_step(config, *, warmup: int) -> float:
    """Steady-state seconds per step of the real run (`harness.train.loop.train`, to
    `config.run.num_train_steps` in a temporary dir), timed between finished steps after
    `warmup` steps (compiling)."""
    from harness.outputs import run_outputs
    from harness.train.loop import train

    stamps: dict[int, float] = {}
    original = run_outputs.RunOutputs.step_finished

    def timed(self, step, scalars, metrics, *, log):
        original(self, step, scalars, metrics, log=log)
        stamps[step] = time.perf_counter()

    run_outputs.RunOutputs.step_finished = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train(config.replace(checkpoint_dir=f"{tmp}/ckpt", run_dir=f"{tmp}/run"))
    finally:
        run_outputs.RunOutputs.step_finished = original
    last = config.run.num_train_steps - 1
    return (stamps[last] - stamps[warmup - 1]) / (last - warmup + 1)
