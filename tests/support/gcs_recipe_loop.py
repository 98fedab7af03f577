"""Runs the documented GCS recipe, exactly as written, N times, and prints `N passed, M failed`.

    .venv/bin/python -m tests.support.gcs_recipe_loop --runs 20

The recipe is the first ```bash block of docs/gcs.md: start
the emulator, train and save, resume with more steps, stop the emulator. A run passes
when the block exits 0, the last run says it resumed, and every row of its metrics.jsonl
equals, bit for bit, the row of the same step of one uninterrupted local run made with
the same flags (the last harness-train command's, with a local checkpoint dir, without
--resume, logging every step). Every
command has a timeout; a run that leaves the emulator behind has it stopped.
Exits 0 only if every run passed. From the repository root (the page's commands are
relative to it).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.outputs.sinks import read_metrics
from tests.support.gcs_emulator import pid_path, stop_command
from tests.support.runs import REPO_ROOT, harness_env

RUN_TIMEOUT_S = 300
RESUMED = "Resumed from checkpoint at step "


def recipe_block(page: Path) -> str:
    """The first ```bash block of the GCS page."""
    match = re.search(r"```bash\n(.*?)```", page.read_text(), re.DOTALL)
    if not match:
        raise ValueError(f"no ```bash block in {page}")
    return match.group(1)


def harness_commands(block: str) -> list[list[str]]:
    """The block's harness-train commands as argument lists (continuation lines joined)."""
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.split()[:1] == [".venv/bin/harness-train"]]


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def reference_args(resume_args: list[str], workdir: Path) -> list[str]:
    """The resumed command's flags for one uninterrupted local run in `workdir` that
    logs every step (the recipe's rows are a subset: each run also logs its last step)."""
    args = [arg for arg in resume_args[1:] if arg != "--resume"]
    args[args.index("--checkpoint_dir") + 1] = str(workdir / "ckpt")
    args[args.index("--run_dir") + 1] = str(workdir / "run")
    return [*args, "--log_interval", "1"]


def metrics_problem(rows: list[dict], reference: dict[int, dict], last_step: int) -> str | None:
    """Why `rows` are not the uninterrupted run's rows of the same steps, up to `last_step`."""
    if not rows or rows[-1]["step"] != last_step:
        return f"metrics end at step {rows[-1]['step'] if rows else None}, not {last_step}"
    differing = [row["step"] for row in rows if reference.get(row["step"]) != row]
    return f"metrics of steps {differing} differ from the uninterrupted run's" if differing else None


def emulator_port(block: str) -> int:
    return int(re.search(r"gcs_emulator start --port (\d+)", block).group(1))


def run_recipe(block: str, log_path: Path) -> int:
    """Runs the block with bash (stopping at the first failing command); its exit code."""
    with log_path.open("w") as log:
        try:
            return subprocess.run(["bash", "-e", "-c", block], cwd=REPO_ROOT, env=harness_env(),
                                  stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S, check=False).returncode
        except subprocess.TimeoutExpired:
            return 124


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.gcs_recipe_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--page", type=Path, default=REPO_ROOT / "docs" / "gcs.md")
    args = parser.parse_args(argv)

    block = recipe_block(args.page)
    resume = harness_commands(block)[-1]
    run_dir = Path(flag_value(resume, "--run_dir"))
    port = emulator_port(block)
    workdir = Path(tempfile.mkdtemp(prefix="gcs_recipe_loop-"))

    reference = subprocess.run([sys.executable, "-m", "harness.train", *reference_args(resume, workdir)],
                               cwd=REPO_ROOT, env=harness_env(), capture_output=True, text=True,
                               timeout=RUN_TIMEOUT_S, check=False)
    if reference.returncode != 0:
        print(f"the uninterrupted local run failed (exit {reference.returncode}):\n{reference.stderr[-3000:]}")
        return 1
    reference_rows = {row["step"]: row for row in read_metrics(workdir / "run" / "metrics.jsonl")}
    last_step = max(reference_rows)
    print(f"reference: an uninterrupted local run, steps 0-{last_step}; logs in {workdir}")

    passed = failed = 0
    for run in range(1, args.runs + 1):
        log_path = workdir / f"recipe-{run:02d}.log"
        started = time.monotonic()
        shutil.rmtree(run_dir, ignore_errors=True)  # No rows left from the run before.
        try:
            exit_code = run_recipe(block, log_path)
        finally:
            if pid_path(port).exists():  # The block stopped before its last line.
                stop_command(port)
        output = log_path.read_text(errors="replace")
        metrics = run_dir / "metrics.jsonl"
        rows = read_metrics(metrics) if metrics.exists() else []
        problems = [
            f"exit {exit_code}" if exit_code else "",
            "" if RESUMED in output else f"no {RESUMED!r} line",
            metrics_problem(rows, reference_rows, last_step) or "",
        ]
        problems = [p for p in problems if p]
        took = time.monotonic() - started
        if problems:
            failed += 1
            print(f"run {run}: FAILED in {took:.1f} s: {'; '.join(problems)} (log: {log_path})")
        else:
            passed += 1
            print(f"run {run}: ok in {took:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
