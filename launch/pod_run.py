"""Carrying out a planned TPU pod launch (or printing the commands it would run): ship
the files, count the workers, one ssh per worker under launch/supervisor.py, and the
stop script on every worker when one fails, --timeout passes or a stop is requested.

Why one ssh per worker instead of `--worker=all`: the latter interleaves every worker's
output into one stream and reports only one exit status at the end. Separate processes
give one log per worker (<log_dir>/worker-<i>.log, plus a merged `[worker i] ` view on
the terminal, launch/streaming.py), time each worker's set-up steps as they finish
(launch/provision_progress.py), say which worker failed (launch/failures.py), and let
the launcher stop the others at once.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import threading
from pathlib import Path
from typing import TextIO

from launch.failures import PodResult, describe_returncode
from launch.gcloud import TpuVm, count_workers, describe_argv, remote_command, ssh_argv
from launch.provision import Shipment, ship, ship_lines
from launch.provision_progress import ProvisionProgress
from launch.remote_script import RemoteRun, launch_script, stop_script
from launch.supervisor import Supervisor, run_bounded

PROGRAM = "launch.tpu_pod"
# Time to open ssh sessions to every worker, on top of the harness's own grace period.
REMOTE_STOP_MARGIN_S = 60.0


@dataclasses.dataclass(frozen=True)
class PodPlan:
    """One launch, decided before anything runs: where, what to ship, what each worker runs."""

    tpu: TpuVm
    shipment: Shipment
    run: RemoteRun
    num_workers: int | None  # None: ask `gcloud ... describe`
    log_dir: Path
    timeout: float | None
    wandb_key: str | None = dataclasses.field(default=None, repr=False)


def say(message: str) -> None:
    """One line of the launcher's own, before the workers start (stdout)."""
    print(f"{PROGRAM}: {message}", flush=True)


def stop_remote(tpu: TpuVm, run: RemoteRun, stderr: TextIO) -> None:
    """Best effort: run the stop script on all workers; report, never raise, on failure."""
    print(f"{PROGRAM}: stopping the harness on all workers", file=stderr, flush=True)
    argv = ssh_argv(tpu, "all", remote_command(stop_script(run)))
    returncode, _ = run_bounded(argv, timeout=run.kill_grace + REMOTE_STOP_MARGIN_S)
    if returncode != 0:
        print(
            f"{PROGRAM}: remote stop failed ({describe_returncode(returncode)})", file=stderr, flush=True
        )


def run_workers(
    plan: PodPlan,
    num_workers: int,
    *,
    stop_event: threading.Event | None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> PodResult:
    """One ssh per worker running the launch script, each worker's set-up steps said as
    they finish; the first failure stops them all."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    command = remote_command(launch_script(plan.run))
    stdin_data = None if plan.wandb_key is None else f"{plan.wandb_key}\n".encode()
    with Supervisor(PROGRAM, stdout, stderr) as supervisor:
        progress = ProvisionProgress(num_workers, supervisor.say)
        for worker in range(num_workers):
            supervisor.start(
                f"worker {worker}",
                ssh_argv(plan.tpu, worker, command),
                stdin_data=stdin_data,
                log_path=plan.log_dir / f"worker-{worker}.log",
                on_line=progress.watch(worker),
            )
        return supervisor.wait(
            timeout=plan.timeout,
            kill_grace=plan.run.kill_grace + REMOTE_STOP_MARGIN_S,
            stop_event=stop_event,
            graceful_stop=lambda: stop_remote(plan.tpu, plan.run, stderr),
        )


def run_plan(plan: PodPlan, stop_event: threading.Event) -> int:
    """Ship, count the workers, run them; the exit status of the whole launch. Raises
    LaunchError when a step before the workers start fails."""
    ship(plan.tpu, plan.shipment, stop_event, say)
    num_workers = plan.num_workers or count_workers(plan.tpu, stop_event)
    say(f"running on {num_workers} workers of {plan.tpu.name}; logs in {plan.log_dir}")
    return run_workers(plan, num_workers, stop_event=stop_event).exit_status


def dry_run_lines(plan: PodPlan) -> list[str]:
    """The commands a launch would run, shell-quoted, one per line, runnable as printed from
    the current directory (the archive is built here first); notes as comments."""
    tpu, run = plan.tpu, plan.run
    lines = ship_lines(tpu, plan.shipment)
    stdin = ""
    if run.wandb_key_on_stdin:
        lines.append("# WANDB_API_KEY=*** is written to each ssh's stdin, never onto a command line")
        stdin = ' <<< "$WANDB_API_KEY"'
    command = remote_command(launch_script(run))
    lines.append("# one ssh per worker, all at once (the workers wait for each other)")
    if plan.num_workers:
        lines.extend(shlex.join(ssh_argv(tpu, worker, command)) + stdin + " &" for worker in range(plan.num_workers))
    else:
        count = "python3 -c 'import json, sys; print(len(json.load(sys.stdin)[\"networkEndpoints\"]))'"
        lines.append(f'workers="$({shlex.join(describe_argv(tpu))} | {count})"')
        argv = ssh_argv(tpu, "W", command)
        before, after = argv[:argv.index("--worker=W")], argv[argv.index("--worker=W") + 1:]
        lines.append(f'for worker in $(seq 0 $((workers - 1))); do {shlex.join(before)} --worker="$worker" '
                     f"{shlex.join(after)}{stdin} & done")
    lines.append("wait")
    lines.append("# on a worker failure, --timeout or a stop request:")
    lines.append("# " + shlex.join(ssh_argv(tpu, "all", remote_command(stop_script(run)))))
    return lines
