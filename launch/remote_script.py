"""The bash each TPU worker runs for launch.tpu_pod: the launch script and the stop script.

The launch script, the same on every worker: stop a harness left over from an earlier
launch, unpack the release into ~/podharness/releases/<commit> (the newest
--keep_releases are kept), provision Python (launch/worker_setup.sh, or --python as it
is), then `exec` the harness under launch/worker_run.py, which keeps its output in
~/podharness/runs/<run id>/ so it outlives the ssh session. Each finished set-up step
prints a marker that the launcher shows as progress (launch/provision_progress.py).
Of the HARNESS_* variables only HARNESS_RUN_ID is set: on a TPU VM the harness finds its
peers from the TPU metadata (`jax.distributed.initialize()` with no arguments).

Why a stop script run on the workers: without a terminal the remote process outlives
its ssh session, so killing the local ssh would not stop it. The stop script sends
SIGTERM to the harness (which saves at an agreed step and exits 42), then SIGKILL after
--kill_grace. The harness pid is kept in ~/podharness/harness.pid rather than found with
`pkill -f harness.train`, because that pattern also matches the remote shell running
the script (its own command line contains it). A per-launch stop marker covers workers
that have not started the harness yet when the stop arrives.

Why WANDB_API_KEY arrives on stdin: on the ssh command line it would be saved in
gcloud's own log files (~/.config/gcloud/logs records every command's arguments) and be
visible in `ps`; the script reads it and exports it into the harness process only.
"""

from __future__ import annotations

import dataclasses
import shlex

from launch.provision_progress import HARNESS_STARTING, RELEASE_UNPACKED, step_statement

DEFAULT_KEEP_RELEASES = 3
WORKER_RUNS_KEPT = 10  # per-run worker logs in ~/podharness/runs
# Where the launcher copies the wheelhouse and --python_dist (relative to the remote home).
WHEELHOUSE_ARCHIVE = "podharness-wheelhouse.tar"
PYTHON_DIST_ARCHIVE = "podharness-python.tar.gz"

_ROOT = '"$HOME/podharness"'
_PIDFILE = '"$HOME/podharness/harness.pid"'
_RELEASES = '"$HOME/podharness/releases"'
_RUNS = '"$HOME/podharness/runs"'
_VENV = '"$HOME/podharness/venv"'
_WHEELHOUSE = '"$HOME/podharness/wheelhouse"'


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
