"""Shipping a launch's files to every TPU worker: the release, and the wheelhouse and
Python for workers without internet. What the workers then do with them is
launch/remote_script.py's and launch/worker_setup.sh's job.

The release is `git archive HEAD`, so a launch runs a commit that can be named. A tree
with uncommitted changes to tracked files ships the tracked files as they are on disk
(under `<commit>-dirty`, so it never passes for its commit), and only with
--allow_dirty; untracked files are never shipped. Each file goes to every worker with
one `gcloud ... scp --worker=all`, and the launcher says how big it is and how long the
copy took: on a 16-worker pod a several-hundred-MB wheelhouse is most of a launch.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from launch.failures import describe_returncode
from launch.gcloud import LaunchError, TpuVm, scp_argv
from launch.remote_script import PYTHON_DIST_ARCHIVE, WHEELHOUSE_ARCHIVE, remote_archive_name
from launch.supervisor import run_bounded

GIT_TIMEOUT_S = 120.0
SCP_TIMEOUT_S = 1800.0


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

    def describe(self) -> str:
        """`commit C`, and the files that differ from it when there are any."""
        dirty = f" with uncommitted changes to: {', '.join(self.dirty_files)}" if self.dirty_files else ""
        return f"commit {self.commit}{dirty}"


@dataclasses.dataclass(frozen=True)
class Shipment:
    """What goes to every worker's home before the workers start."""

    snapshot: Snapshot
    wheelhouse: Path | None = None  # a directory from `python -m launch.wheelhouse`
    python_dist: Path | None = None  # a python-build-standalone install_only .tar.gz


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


def write_wheelhouse_archive(wheelhouse: Path, dest: Path) -> None:
    """The wheelhouse directory as one uncompressed tar (wheels are compressed already)."""
    with tarfile.open(dest, "w") as archive:
        for path in sorted(wheelhouse.iterdir()):
            archive.add(path, arcname=path.name)


def copy_to_workers(tpu: TpuVm, source: Path, remote_name: str, what: str, stop_event: threading.Event,
                    say: Callable[[str], None]) -> None:
    """scp one file to every worker's home, saying how big and how long; LaunchError
    naming `what` on failure."""
    say(f"copying {what} ({source.stat().st_size / 2**20:.1f} MiB) to every worker")
    started = time.monotonic()
    returncode, _ = run_bounded(scp_argv(tpu, source, remote_name), timeout=SCP_TIMEOUT_S, stop_event=stop_event)
    if returncode != 0:
        raise LaunchError(f"copying {what} to {tpu.name} failed ({describe_returncode(returncode)})")
    say(f"copied {what} ({time.monotonic() - started:.1f} s)")


def ship(tpu: TpuVm, shipment: Shipment, stop_event: threading.Event, say: Callable[[str], None]) -> None:
    """Pack and copy everything in `shipment` to every worker; LaunchError on a failure."""
    say(f"shipping {shipment.snapshot.describe()}")
    with tempfile.TemporaryDirectory(prefix="podharness-") as tmp:
        archive = Path(tmp) / remote_archive_name(shipment.snapshot.deploy_id)
        write_archive(shipment.snapshot, archive)
        copy_to_workers(tpu, archive, archive.name, "the archive", stop_event, say)
        if shipment.wheelhouse is not None:
            wheelhouse = Path(tmp) / WHEELHOUSE_ARCHIVE
            write_wheelhouse_archive(shipment.wheelhouse, wheelhouse)
            copy_to_workers(tpu, wheelhouse, WHEELHOUSE_ARCHIVE, f"the wheelhouse {shipment.wheelhouse}",
                            stop_event, say)
    if shipment.python_dist is not None:
        copy_to_workers(tpu, shipment.python_dist, PYTHON_DIST_ARCHIVE, f"the Python {shipment.python_dist}",
                        stop_event, say)


def _archive_build_line(snapshot: Snapshot, dest: str) -> str:
    """A shell command that writes the archive `write_archive` would, as `dest`."""
    if not snapshot.dirty_files:
        return shlex.join(["git", "-C", str(snapshot.repo), "archive", "--format=tar.gz", snapshot.commit]) + (
            f" > {shlex.quote(dest)}")
    # The tracked files as they are on disk; deleted ones are skipped, as write_archive does.
    return (f"(cd {shlex.quote(str(snapshot.repo))} && git ls-files -z"
            f" | tar --null --no-recursion --ignore-failed-read -czf - -T -) > {shlex.quote(dest)}")


def ship_lines(tpu: TpuVm, shipment: Shipment) -> list[str]:
    """The shell commands `ship` amounts to, runnable as printed from the current directory
    (each file is built here first, then copied)."""
    snapshot = shipment.snapshot
    archive = remote_archive_name(snapshot.deploy_id)
    dirty = f" plus uncommitted changes to {len(snapshot.dirty_files)} files" if snapshot.dirty_files else ""
    lines = [f"# commit {snapshot.commit}{dirty}: build the archive here, then copy it to every worker",
             _archive_build_line(snapshot, archive),
             shlex.join(scp_argv(tpu, Path(archive), archive))]
    if shipment.wheelhouse is not None:
        lines.append(shlex.join(["tar", "-cf", WHEELHOUSE_ARCHIVE, "-C", str(shipment.wheelhouse), "."]))
        lines.append(shlex.join(scp_argv(tpu, Path(WHEELHOUSE_ARCHIVE), WHEELHOUSE_ARCHIVE)))
    if shipment.python_dist is not None:
        lines.append(shlex.join(scp_argv(tpu, shipment.python_dist, PYTHON_DIST_ARCHIVE)))
    return lines
