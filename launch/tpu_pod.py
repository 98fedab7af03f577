"""Ship this repository's HEAD to a Cloud TPU VM pod and run the harness on every worker.

    bash launch/tpu_pod.sh --tpu my-v4-32 --zone us-central2-b --project my-project \\
        --preset base -- --extra_harness_flag=1

1. Pack `git archive HEAD`. A working tree with uncommitted changes to tracked files is
   refused (exit 2) unless --allow_dirty, which ships the tracked files as they are on
   disk; untracked files are never shipped.
2. `gcloud compute tpus tpu-vm scp` the archive to every worker (`--worker=all`), and the
   --wheelhouse (as one tar) and --python_dist when given.
3. One `gcloud compute tpus tpu-vm ssh --worker=i` per worker, all in parallel, each
   running the same remote script: stop a harness left over from an earlier launch,
   unpack into ~/podharness/releases/<commit> (the newest --keep_releases are kept),
   provision Python (launch/worker_setup.sh: reports the worker's python3, venv, pip and
   uv, then makes ~/podharness/venv with Python >= 3.11 and the requirements, kept
   between launches; --provision, --wheelhouse for workers without internet,
   --python_dist; or --python to use an interpreter as it is), then run
   `python -m harness.train --config <preset> <extra flags>` (`harness.preflight` with
   --preflight: is the pod ready?) under launch/worker_run.py,
   which keeps the harness's output in ~/podharness/runs/<run id>/ so it outlives the ssh
   session, and ends with the harness's exit status or signal. Of the HARNESS_* variables
   only HARNESS_RUN_ID is set (this launch's run id, the same on every worker, by which
   preflight's roll call tells a worker of another launch apart): on a TPU VM the
   harness finds its peers from the TPU metadata
   (`jax.distributed.initialize()` with no arguments: `distributed = "pod"` in the
   preset, or `-- --distributed pod`).

Why one ssh per worker instead of `--worker=all`: the latter interleaves every worker's
output into one stream and reports only one exit status at the end. Separate processes
give one log per worker (<log_dir>/worker-<i>.log, plus a merged `[worker i] ` view on
the terminal), time each worker's set-up steps as they finish (`worker 3 of 16:
requirements installed (12.3 s)`, launch/provision_progress.py), say which worker
failed, and let the launcher stop the others at once.
When the worker that failed is a survivor whose watchdog named a silent peer, the
report names the peer (on a single-slice pod, worker i is JAX process i):
`launch.tpu_pod: worker 1 stopped responding (named by worker 0); worker 0 failed
(exit code 42)`.

Stopping: when a worker fails, --timeout passes, or the launcher gets SIGTERM/SIGINT, it
runs a stop script on all workers (`--worker=all`): SIGTERM to the harness (which saves
a checkpoint at an agreed step and exits 42; a host whose peer is gone exits 42 within
seconds, harness/runtime/stop_deadline.py), SIGKILL after --kill_grace seconds. A
relaunch does the same to a harness left running by a launcher that died. Killing the
local ssh alone would not do: without a terminal the remote process outlives its ssh
session. The
remote harness pid is kept in ~/podharness/harness.pid rather than found with
`pkill -f harness.train`, because that pattern also matches the remote shell running
the script (its own command line contains it). A per-launch stop marker covers workers
that have not started the harness yet when the stop arrives.

WANDB_API_KEY, when set here, is written to each worker's ssh stdin and exported only
into the harness process. On the ssh command line it would be saved in gcloud's own log
files (~/.config/gcloud/logs records every command's arguments) and be visible in `ps`.

Exit status: 0 if every worker's harness exits 0 (or 0/42 after a stop request); 2 for
usage errors and a dirty tree; 1 if packing, copying or describing fails; otherwise the
first failing worker's harness status (its exit code, 128+N when killed by signal N,
as the worker reported it; 255 when ssh itself failed and no status came back), so the
restart contract (harness/errors.py) passes through; 124 when --timeout fires.
"""

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from launch.provision_progress import HARNESS_STARTING, RELEASE_UNPACKED, ProvisionProgress, step_statement
from launch.supervisor import PodResult, Supervisor, describe_returncode, run_bounded, stop_on_signals

PROGRAM = "launch.tpu_pod"
GCLOUD_TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
GIT_TIMEOUT_S = 120.0
DESCRIBE_TIMEOUT_S = 120.0
SCP_TIMEOUT_S = 1800.0
# Time to open ssh sessions to every worker, on top of the harness's own grace period.
REMOTE_STOP_MARGIN_S = 60.0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_KEEP_RELEASES = 3
WORKER_RUNS_KEPT = 10  # per-run worker logs in ~/podharness/runs
PROVISION_MODES = ("auto", "system", "uv")
WHEELHOUSE_ARCHIVE = "podharness-wheelhouse.tar"
PYTHON_DIST_ARCHIVE = "podharness-python.tar.gz"


class LaunchError(Exception):
    """A step before the workers start failed; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class TpuVm:
    """The TPU VM (pod slice) that gcloud commands address."""

    name: str
    zone: str
    project: str

    def location_flags(self) -> list[str]:
        return ["--zone", self.zone, "--project", self.project]


def describe_argv(tpu: TpuVm) -> list[str]:
    return [*GCLOUD_TPU_VM, "describe", tpu.name, *tpu.location_flags(), "--format=json"]


def scp_argv(tpu: TpuVm, archive: Path, remote_path: str) -> list[str]:
    return [
        *GCLOUD_TPU_VM,
        "scp",
        str(archive),
        f"{tpu.name}:{remote_path}",
        *tpu.location_flags(),
        "--worker=all",
    ]


def ssh_argv(tpu: TpuVm, worker: int | str, remote_command: str) -> list[str]:
    return [
        *GCLOUD_TPU_VM,
        "ssh",
        tpu.name,
        *tpu.location_flags(),
        f"--worker={worker}",
        "--command",
        remote_command,
    ]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The code to ship: a commit, and which tracked files differ from it on disk."""

    repo: Path
    commit: str
    dirty_files: tuple[str, ...]

    @property
    def deploy_id(self) -> str:
        """Names the remote directory; a dirty tree must not pass for its commit."""
        return f"{self.commit}-dirty" if self.dirty_files else self.commit


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=GIT_TIMEOUT_S
    ).stdout


def _porcelain_paths(status: bytes) -> list[str]:
    """Paths named by `git status --porcelain -z` (a rename's source entry is skipped)."""
    entries = status.split(b"\0")
    paths, i = [], 0
    while i < len(entries):
        entry = entries[i]
        if entry:
            paths.append(entry[3:].decode("utf-8", errors="replace"))
        i += 2 if entry[:1] in (b"R", b"C") else 1
    return paths


def take_snapshot(path: Path) -> Snapshot:
    """The HEAD commit of the git repository containing `path`, and its dirty tracked files."""
    try:
        repo = Path(_git(path, "rev-parse", "--show-toplevel").decode().strip())
        commit = _git(repo, "rev-parse", "--verify", "HEAD").decode().strip()
        status = _git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=no")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        stderr = getattr(error, "stderr", b"") or b""
        raise LaunchError(
            f"cannot read the git repository at {path}: {stderr.decode().strip() or error}"
        ) from error
    return Snapshot(repo, commit, tuple(_porcelain_paths(status)))


def write_archive(snapshot: Snapshot, dest: Path) -> None:
    """Write the code to ship as a .tar.gz: the commit, or the tracked files on disk if dirty."""
    if not snapshot.dirty_files:
        _git(snapshot.repo, "archive", "--format=tar.gz", "-o", str(dest), snapshot.commit)
        return
    tracked = _git(snapshot.repo, "ls-files", "-z").decode("utf-8").split("\0")
    with tarfile.open(dest, "w:gz") as archive:
        for name in filter(None, tracked):
            path = snapshot.repo / name
            # Deleted files are gone from the tree being shipped; submodules are not shipped.
            if path.is_symlink() or path.is_file():
                archive.add(path, arcname=name, recursive=False)


def remote_archive_name(deploy_id: str) -> str:
    """Relative to the remote home: scp puts it there, and each fake-pod worker has its own."""
    return f"podharness-{deploy_id}.tar.gz"


@dataclasses.dataclass(frozen=True)
class RemoteRun:
    """Everything the remote scripts need to know about one launch."""

    deploy_id: str
    run_id: str
    harness_args: tuple[str, ...]
    python: str | None
    wandb_key_on_stdin: bool
    kill_grace: float
    provision: str = "auto"
    extras: str = "tpu"
    python_version: str = "3.11"
    wheelhouse: bool = False
    python_dist: bool = False
    keep_releases: int = DEFAULT_KEEP_RELEASES
    module: str = "harness.train"  # or harness.preflight (--preflight)


_ROOT = '"$HOME/podharness"'
_PIDFILE = '"$HOME/podharness/harness.pid"'
_RELEASES = '"$HOME/podharness/releases"'
_RUNS = '"$HOME/podharness/runs"'
_VENV = '"$HOME/podharness/venv"'
_WHEELHOUSE = '"$HOME/podharness/wheelhouse"'


def _stop_marker_name(run_id: str) -> str:
    return shlex.quote(f"stop-{run_id}")


def _stop_marker(run_id: str) -> str:
    return f"{_ROOT}/{_stop_marker_name(run_id)}"


def _stop_harness_statements(kill_grace: float) -> list[str]:
    """Bash that stops the harness recorded in the pidfile: SIGTERM, then SIGKILL after the grace.

    The pid is only trusted if its command line still mentions harness.train (or
    harness.preflight), so a recycled pid is left alone.
    """
    ticks = max(1, round(kill_grace * 10))
    return [
        'alive() { [ -d "/proc/$1" ] && ! grep -qs "^State:[[:space:]]*Z" "/proc/$1/status"; }',
        f'if [ -f {_PIDFILE} ]; then pid="$(cat {_PIDFILE})";'
        ' if grep -qasE "harness[.](train|preflight)" "/proc/$pid/cmdline"; then'
        ' echo "podharness: stopping harness process $pid" >&2;'
        ' kill -TERM "$pid" 2>/dev/null || true;'
        f' for _ in $(seq {ticks}); do alive "$pid" || break; sleep 0.1; done;'
        ' if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi;'
        f" fi; rm -f {_PIDFILE}; fi",
    ]


def stop_script(run: RemoteRun) -> str:
    """Bash for every worker that stops this launch's harness, started or not."""
    statements = [
        "set -u",
        f"mkdir -p {_ROOT}",
        f"touch {_stop_marker(run.run_id)}",
        *_stop_harness_statements(run.kill_grace),
    ]
    return "; ".join(statements)


def _prune_statement(directory: str, keep: int) -> str:
    """Bash that deletes all but the `keep` newest entries of `directory`."""
    return (f'find {directory} -mindepth 1 -maxdepth 1 -printf "%T@ %p\\n" | sort -rn'
            f' | tail -n +{keep + 1} | cut -d" " -f2- | xargs -r -d "\\n" rm -rf --')


def _python_setup_statements(run: RemoteRun) -> list[str]:
    """Bash that sets $python: the interpreter as given, or launch/worker_setup.sh's venv."""
    if run.python is not None:
        return [f"python={shlex.quote(run.python)}"]
    flags = ["--venv", _VENV, "--provision", shlex.quote(run.provision),
             "--extras", shlex.quote(run.extras), "--python_version", shlex.quote(run.python_version)]
    if run.wheelhouse:
        flags += ["--wheelhouse", _WHEELHOUSE]
    if run.python_dist:
        flags += ["--python_dist", f'"$HOME"/{PYTHON_DIST_ARCHIVE}']
    return [f'python="$(bash launch/worker_setup.sh {" ".join(flags)})"']


def _unpack_wheelhouse_statements() -> list[str]:
    archive = f'"$HOME"/{WHEELHOUSE_ARCHIVE}'
    return [f"rm -rf {_WHEELHOUSE}", f"mkdir -p {_WHEELHOUSE}", f"tar -xf {archive} -C {_WHEELHOUSE}",
            f"rm -f {archive}"]


def launch_script(run: RemoteRun) -> str:
    """Bash for each worker: stop a stale harness, unpack, provision python, run the harness.

    One line (statements joined by '; ') so a dry run prints one command per line; the
    scripts quote with double quotes only, so quoting them for --command stays readable.
    """
    archive = f'"$HOME"/{shlex.quote(remote_archive_name(run.deploy_id))}'
    code_dir = f"{_RELEASES}/{shlex.quote(run.deploy_id)}"
    read_key = [
        'IFS= read -r wandb_key || { echo "podharness: WANDB_API_KEY expected on stdin" >&2; exit 2; }'
    ]
    run_dir = f"{_RUNS}/{shlex.quote(run.run_id)}"
    statements = [
        "set -euo pipefail",
        *(read_key if run.wandb_key_on_stdin else []),
        f"mkdir -p {_RELEASES} {_RUNS}",
        f'find {_ROOT} -maxdepth 1 -name "stop-*" ! -name {_stop_marker_name(run.run_id)} -delete',
        *_stop_harness_statements(run.kill_grace),
        f"rm -rf {code_dir}",
        f"mkdir -p {code_dir}",
        f"tar -xzf {archive} -C {code_dir}",
        f"rm -f {archive}",
        step_statement(RELEASE_UNPACKED),
        _prune_statement(_RELEASES, run.keep_releases),
        _prune_statement(_RUNS, WORKER_RUNS_KEPT - 1),
        # Commits shipped before releases/ existed: ~/podharness/<commit>[-dirty].
        f'find {_ROOT} -mindepth 1 -maxdepth 1 -type d -regextype posix-extended'
        f' -regex ".*/[0-9a-f]{{40}}(-dirty)?" -exec rm -rf {{}} +',
        *(_unpack_wheelhouse_statements() if run.wheelhouse else []),
        f"cd {code_dir}",
        *_python_setup_statements(run),
        "export PYTHONUNBUFFERED=1",
        f"export HARNESS_RUN_ID={shlex.quote(run.run_id)}",
        *(['export WANDB_API_KEY="$wandb_key"'] if run.wandb_key_on_stdin else []),
        step_statement(HARNESS_STARTING),
        f'exec "$python" -m launch.worker_run --pidfile {_PIDFILE} --stop_marker {_stop_marker(run.run_id)}'
        f' --log_dir {run_dir} -- "$python" -m {run.module} {shlex.join(run.harness_args)}'.rstrip(),
    ]
    return "; ".join(statements)


def remote_command(script: str) -> str:
    """The --command value: the script run by bash, whatever the remote login shell is."""
    return shlex.join(["bash", "-c", script])


def count_workers(tpu: TpuVm, stop_event: threading.Event | None = None) -> int:
    """Number of workers (hosts) of the TPU VM, from `gcloud ... describe`."""
    returncode, output = run_bounded(
        describe_argv(tpu), timeout=DESCRIBE_TIMEOUT_S, stop_event=stop_event, capture_stdout=True
    )
    if returncode != 0:
        raise LaunchError(f"describing {tpu.name} failed ({describe_returncode(returncode)})")
    try:
        endpoints = json.loads(output)["networkEndpoints"]
    except (ValueError, KeyError, TypeError) as error:
        raise LaunchError(f"unexpected `describe` output for {tpu.name}: {error}") from error
    if not endpoints:
        raise LaunchError(f"{tpu.name} has no network endpoints (is it still being created?)")
    return len(endpoints)


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
    tpu: TpuVm,
    num_workers: int,
    run: RemoteRun,
    log_dir: Path,
    *,
    wandb_key: str | None,
    timeout: float | None,
    stop_event: threading.Event | None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> PodResult:
    """One ssh per worker running the launch script, each worker's set-up steps said as
    they finish (launch/provision_progress.py); the first failure stops them all."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    log_dir.mkdir(parents=True, exist_ok=True)
    command = remote_command(launch_script(run))
    stdin_data = None if wandb_key is None else f"{wandb_key}\n".encode()
    with Supervisor(PROGRAM, stdout, stderr) as supervisor:
        progress = ProvisionProgress(num_workers, supervisor.say)
        for worker in range(num_workers):
            supervisor.start(
                f"worker {worker}",
                ssh_argv(tpu, worker, command),
                stdin_data=stdin_data,
                log_path=log_dir / f"worker-{worker}.log",
                on_line=progress.watch(worker),
            )
        return supervisor.wait(
            timeout=timeout,
            kill_grace=run.kill_grace + REMOTE_STOP_MARGIN_S,
            stop_event=stop_event,
            graceful_stop=lambda: stop_remote(tpu, run, stderr),
        )


def archive_build_line(snapshot: Snapshot, dest: str) -> str:
    """A shell command that writes the archive `write_archive` would, as `dest`."""
    if not snapshot.dirty_files:
        return shlex.join(["git", "-C", str(snapshot.repo), "archive", "--format=tar.gz", snapshot.commit]) + (
            f" > {shlex.quote(dest)}")
    # The tracked files as they are on disk; deleted ones are skipped, as write_archive does.
    return (f"(cd {shlex.quote(str(snapshot.repo))} && git ls-files -z"
            f" | tar --null --no-recursion --ignore-failed-read -czf - -T -) > {shlex.quote(dest)}")


def wheelhouse_build_line(wheelhouse: Path, dest: str) -> str:
    return shlex.join(["tar", "-cf", dest, "-C", str(wheelhouse), "."])


def dry_run_lines(tpu: TpuVm, snapshot: Snapshot, run: RemoteRun, num_workers: int | None,
                  wheelhouse: Path | None = None, python_dist: Path | None = None) -> list[str]:
    """The commands a launch would run, shell-quoted, one per line, runnable as printed from
    the current directory (the archive is built here first); notes as comments."""
    archive = remote_archive_name(snapshot.deploy_id)
    dirty = (
        f" plus uncommitted changes to {len(snapshot.dirty_files)} files" if snapshot.dirty_files else ""
    )
    lines = [f"# commit {snapshot.commit}{dirty}: build the archive here, then copy it to every worker"]
    lines.append(archive_build_line(snapshot, archive))
    lines.append(shlex.join(scp_argv(tpu, Path(archive), archive)))
    if wheelhouse is not None:
        lines.append(wheelhouse_build_line(wheelhouse, WHEELHOUSE_ARCHIVE))
        lines.append(shlex.join(scp_argv(tpu, Path(WHEELHOUSE_ARCHIVE), WHEELHOUSE_ARCHIVE)))
    if python_dist is not None:
        lines.append(shlex.join(scp_argv(tpu, python_dist, PYTHON_DIST_ARCHIVE)))
    stdin = ""
    if run.wandb_key_on_stdin:
        lines.append("# WANDB_API_KEY=*** is written to each ssh's stdin, never onto a command line")
        stdin = ' <<< "$WANDB_API_KEY"'
    command = remote_command(launch_script(run))
    lines.append("# one ssh per worker, all at once (the workers wait for each other)")
    if num_workers:
        lines.extend(shlex.join(ssh_argv(tpu, worker, command)) + stdin + " &" for worker in range(num_workers))
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


def copy_to_workers(tpu: TpuVm, source: Path, remote_name: str, what: str,
                    stop_event: threading.Event) -> None:
    """scp one file to every worker's home, saying how big and how long; LaunchError
    naming `what` on failure."""
    print(f"{PROGRAM}: copying {what} ({source.stat().st_size / 2**20:.1f} MiB) to every worker", flush=True)
    started = time.monotonic()
    returncode, _ = run_bounded(scp_argv(tpu, source, remote_name), timeout=SCP_TIMEOUT_S, stop_event=stop_event)
    if returncode != 0:
        raise LaunchError(f"copying {what} to {tpu.name} failed ({describe_returncode(returncode)})")
    print(f"{PROGRAM}: copied {what} ({time.monotonic() - started:.1f} s)", flush=True)


def write_wheelhouse_archive(wheelhouse: Path, dest: Path) -> None:
    """The wheelhouse directory as one uncompressed tar (wheels are compressed already)."""
    with tarfile.open(dest, "w") as archive:
        for path in sorted(wheelhouse.iterdir()):
            archive.add(path, arcname=path.name)


def deploy_and_run(
    tpu: TpuVm,
    snapshot: Snapshot,
    run: RemoteRun,
    args: argparse.Namespace,
    wandb_key: str | None,
    stop_event: threading.Event,
) -> int:
    """Pack, copy, count the workers, run them; the exit status of the whole launch."""
    dirty = (
        f" with uncommitted changes to: {', '.join(snapshot.dirty_files)}"
        if snapshot.dirty_files
        else ""
    )
    print(f"{PROGRAM}: shipping commit {snapshot.commit}{dirty}", flush=True)
    with tempfile.TemporaryDirectory(prefix="podharness-") as tmp:
        archive = Path(tmp) / remote_archive_name(snapshot.deploy_id)
        write_archive(snapshot, archive)
        copy_to_workers(tpu, archive, archive.name, "the archive", stop_event)
        if args.wheelhouse is not None:
            wheelhouse = Path(tmp) / WHEELHOUSE_ARCHIVE
            write_wheelhouse_archive(args.wheelhouse, wheelhouse)
            copy_to_workers(tpu, wheelhouse, WHEELHOUSE_ARCHIVE, f"the wheelhouse {args.wheelhouse}", stop_event)
    if args.python_dist is not None:
        copy_to_workers(tpu, args.python_dist, PYTHON_DIST_ARCHIVE, f"the Python {args.python_dist}", stop_event)
    num_workers = args.num_workers or count_workers(tpu, stop_event)
    log_dir = args.log_dir or Path("runs", "tpu_pod", tpu.name, run.run_id)
    print(f"{PROGRAM}: running on {num_workers} workers of {tpu.name}; logs in {log_dir}", flush=True)
    result = run_workers(
        tpu, num_workers, run, log_dir, wandb_key=wandb_key, timeout=args.timeout, stop_event=stop_event
    )
    return result.exit_status


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse launcher flags; everything after `--` goes to the harness unchanged."""
    parser = argparse.ArgumentParser(
        prog="launch/tpu_pod.sh",
        usage="%(prog)s --tpu NAME --zone ZONE --project PROJECT [options] [-- HARNESS_FLAGS...]",
        description="Run the harness at this repository's HEAD on every worker of a Cloud TPU VM.",
    )
    parser.add_argument("--tpu", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument(
        "--preset", help="passed as `--config PRESET` (default: the harness's own default)"
    )
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="print the gcloud commands, run nothing",
    )
    parser.add_argument(
        "--log_dir", type=Path, help="per-worker logs (default: runs/tpu_pod/<tpu>/<run id>)"
    )
    parser.add_argument(
        "--preflight", action="store_true",
        help="run `python -m harness.preflight` (is the pod ready?) on every worker instead of training",
    )
    parser.add_argument(
        "--num_workers", type=int, help="workers in the pod (default: ask `gcloud ... describe`)"
    )
    parser.add_argument(
        "--allow_dirty", action="store_true", help="ship tracked files with uncommitted changes"
    )
    parser.add_argument(
        "--python", help="remote python to run the harness with, as it is: no venv, no installs"
    )
    parser.add_argument(
        "--provision",
        choices=PROVISION_MODES,
        default="auto",
        help="how workers get Python >= 3.11 and a venv (launch/worker_setup.sh): a system"
        " python3.N with venv, uv (which can fetch a standalone CPython), or auto (default)",
    )
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        help="directory of wheels from `python -m launch.wheelhouse`: copied to every worker,"
        " installed with --no-index (workers without internet)",
    )
    parser.add_argument(
        "--python_dist",
        type=Path,
        help="a python-build-standalone install_only .tar.gz for workers without a new enough"
        " Python and without internet",
    )
    parser.add_argument("--extras", default="tpu", help="setup.cfg extras workers install (default: tpu)")
    parser.add_argument(
        "--keep_releases",
        type=int,
        default=DEFAULT_KEEP_RELEASES,
        help=f"shipped commits kept on each worker, the current one included (default: {DEFAULT_KEEP_RELEASES})",
    )
    parser.add_argument(
        "--kill_grace",
        type=float,
        default=60.0,
        help="seconds the harness gets to exit after SIGTERM (default: 60)",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds the workers may run before they are stopped (default: none)"
    )
    parser.add_argument(
        "--repo", type=Path, default=Path("."), help="repository to ship (default: the current one)"
    )
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    if args.num_workers is not None and args.num_workers < 1:
        parser.error("--num_workers must be at least 1")
    if args.keep_releases < 1:
        parser.error("--keep_releases must be at least 1 (the release being started)")
    if args.python is not None and (args.wheelhouse or args.python_dist):
        parser.error("--python runs an interpreter as it is: it takes no --wheelhouse or --python_dist")
    if args.wheelhouse is not None and not (args.wheelhouse / "requirements.txt").is_file():
        parser.error(f"--wheelhouse {args.wheelhouse} has no requirements.txt: build it with python -m launch.wheelhouse")
    if args.python_dist is not None and not args.python_dist.is_file():
        parser.error(f"--python_dist {args.python_dist} is not a file")
    return args, argv[split + 1 :]


def new_run_id() -> str:
    """Sortable and unique: names the log directory and this launch's remote stop marker."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def main(argv: Sequence[str] | None = None) -> int:
    args, harness_flags = parse_args(sys.argv[1:] if argv is None else argv)
    tpu = TpuVm(args.tpu, args.zone, args.project)
    try:
        snapshot = take_snapshot(args.repo)
    except LaunchError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return EXIT_USAGE
    if snapshot.dirty_files and not args.allow_dirty:
        print(
            f"{PROGRAM}: refusing to ship {snapshot.commit}: uncommitted changes to tracked files"
            f" ({', '.join(snapshot.dirty_files)}); commit them, or pass --allow_dirty"
            " to ship them as they are",
            file=sys.stderr,
        )
        return EXIT_USAGE
    wandb_key = os.environ.get("WANDB_API_KEY") or None
    config = ["--config", args.preset] if args.preset else []
    run = RemoteRun(
        deploy_id=snapshot.deploy_id,
        run_id=new_run_id(),
        harness_args=(*config, *harness_flags),
        python=args.python,
        wandb_key_on_stdin=wandb_key is not None,
        kill_grace=args.kill_grace,
        provision=args.provision,
        extras=args.extras,
        wheelhouse=args.wheelhouse is not None,
        python_dist=args.python_dist is not None,
        keep_releases=args.keep_releases,
        module="harness.preflight" if args.preflight else "harness.train",
    )
    if args.dry_run:
        print("\n".join(dry_run_lines(tpu, snapshot, run, args.num_workers, args.wheelhouse, args.python_dist)))
        return 0
    stop_event = threading.Event()
    with stop_on_signals(stop_event):
        try:
            return deploy_and_run(tpu, snapshot, run, args, wandb_key, stop_event)
        except LaunchError as error:
            print(f"{PROGRAM}: {error}", file=sys.stderr)
            return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
