"""Ship this repository's HEAD to a Cloud TPU VM pod and run the harness on every worker.

    bash launch/tpu_pod.sh --tpu my-v4-32 --zone us-central2-b --project my-project \\
        --preset base -- --extra_harness_flag=1

Flags -> a plan -> a run (or, with --dry-run, the plan's commands printed, runnable as
they are). The jobs live in their own modules:

- launch/provision.py: `git archive` HEAD (a dirty tree is refused, exit 2, unless
  --allow_dirty) and `gcloud compute tpus tpu-vm scp --worker=all` it, with the
  --wheelhouse and --python_dist when given, to every worker;
- launch/remote_script.py: what each worker runs: stop a harness left by an earlier
  launch, unpack, provision Python (launch/worker_setup.sh), run `python -m
  harness.train --config <preset> <extra flags>` (`harness.preflight` with --preflight:
  is the pod ready?) under launch/worker_run.py, which outlives the ssh session;
- launch/pod_run.py: one `gcloud ... ssh --worker=i` per worker, all in parallel, under
  launch/supervisor.py; on a failure, --timeout or SIGTERM/SIGINT to the launcher, the
  stop script on all workers (SIGTERM to the harness, which saves at an agreed step and
  exits 42; SIGKILL after --kill_grace);
- launch/streaming.py and launch/provision_progress.py: the merged `[worker i] ` view,
  one log per worker, and each worker's set-up steps as they finish
  (`worker 3 of 16: requirements installed (12.3 s)`);
- launch/failures.py: which worker failed, how, and which peer a survivor named lost
  (`worker 1 stopped responding (named by worker 0); worker 0 failed (exit code 42)`).

Exit status: 0 if every worker's harness exits 0 (or 0/42 after a stop request); 2 for
usage errors and a dirty tree; 1 if packing, copying or describing fails; otherwise the
first failing worker's harness status (its exit code, 128+N when killed by signal N,
as the worker reported it; 255 when ssh itself failed and no status came back), so the
restart contract (harness/errors.py) passes through; 124 when --timeout fires.
"""

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from launch.gcloud import LaunchError, TpuVm
from launch.pod_run import PROGRAM, PodPlan, dry_run_lines, run_plan
from launch.provision import Shipment, Snapshot, take_snapshot
from launch.remote_script import DEFAULT_KEEP_RELEASES, RemoteRun
from launch.run_id import new_run_id
from launch.supervisor import stop_on_signals

EXIT_FAILED = 1
EXIT_USAGE = 2
PROVISION_MODES = ("auto", "system", "uv")


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


def make_plan(args: argparse.Namespace, harness_flags: Sequence[str], snapshot: Snapshot,
              wandb_key: str | None) -> PodPlan:
    """The launch the flags ask for, with a new run id."""
    tpu = TpuVm(args.tpu, args.zone, args.project)
    config = ["--config", args.preset] if args.preset else []
    run = RemoteRun(
        deploy_id=snapshot.deploy_id,
        run_id=new_run_id(),  # also names the log directory and this launch's remote stop marker
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
    return PodPlan(
        tpu=tpu,
        shipment=Shipment(snapshot, args.wheelhouse, args.python_dist),
        run=run,
        num_workers=args.num_workers,
        log_dir=args.log_dir or Path("runs", "tpu_pod", tpu.name, run.run_id),
        timeout=args.timeout,
        wandb_key=wandb_key,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args, harness_flags = parse_args(sys.argv[1:] if argv is None else argv)
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
    plan = make_plan(args, harness_flags, snapshot, os.environ.get("WANDB_API_KEY") or None)
    if args.dry_run:
        print("\n".join(dry_run_lines(plan)))
        return 0
    stop_event = threading.Event()
    with stop_on_signals(stop_event):
        try:
            return run_plan(plan, stop_event)
        except LaunchError as error:
            print(f"{PROGRAM}: {error}", file=sys.stderr)
            return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
