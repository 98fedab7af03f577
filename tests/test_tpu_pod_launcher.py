"""Tests for launch.tpu_pod, end to end against a fake gcloud that emulates a pod here.

tests/support/fake_gcloud.py plays the pod: every worker is a directory (its HOME) and
`ssh --worker=i` runs the remote script there, with the HARNESS_* environment a local
pod uses. The shipped repository is a temporary git repo holding a stand-in
harness/train.py; `real_harness_checkout()` ships /work/main with the real harness.
"""

import dataclasses
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.runtime.watchdog import EXIT_HOST_LOST, lost_hosts_line
from launch.local import free_port
from launch.provision import take_snapshot, write_archive
from tests.support.fake_worker import (
    base_python, fake_uv_wheel, python_dist, standin_dep_wheel, stock_worker_path,
)
from tests.support.runs import REPO_ROOT, pid_alive, wait_until

FAKE_GCLOUD_BIN = REPO_ROOT / "tests" / "support" / "bin"
LAUNCH_TIMEOUT_S = 60
# Made up at run time: this file is itself shipped to the fake pod, a literal would be found there.
SECRET = f"wandb-secret-{uuid.uuid4().hex}"
TPU_FLAGS = ("--tpu", "pod-a", "--zone", "zone-z", "--project", "proj-p")
GCLOUD_TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}

STANDIN_TRAIN = '''\
"""Stand-in for harness.train on the fake pod: reports what the launcher gave it."""
import argparse, hashlib, json, os, signal, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--config")
parser.add_argument("--fail_worker", type=int, default=-1)
parser.add_argument("--report", help="a line the failing worker prints on stderr first")
parser.add_argument("--fail_code", type=int, default=3)
parser.add_argument("--fail_by_signal", type=int, help="the failing worker kills itself with this signal")
parser.add_argument("--hold", action="store_true", help="run until SIGTERM")
args, extra = parser.parse_known_args()
worker = int(os.environ["HARNESS_PROCESS_ID"])
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(42))  # as the harness: saved, restartable
Path(os.environ["HOME"], "standin.pid").write_text(str(os.getpid()))
key = os.environ.get("WANDB_API_KEY")
report = {
    "worker": worker,
    "num_workers": int(os.environ["HARNESS_NUM_PROCESSES"]),
    "coordinator": os.environ["HARNESS_COORDINATOR_ADDRESS"],
    "config": args.config,
    "extra": extra,
    "key_sha": hashlib.sha256(key.encode()).hexdigest()[:12] if key else None,
    "cwd": os.getcwd(),
}
print("stand-in " + json.dumps(report), flush=True)
print(f"stand-in worker {worker} on stderr", file=sys.stderr, flush=True)
if worker == args.fail_worker:
    if args.report:
        print(args.report, file=sys.stderr, flush=True)
    if args.fail_by_signal:
        os.kill(os.getpid(), args.fail_by_signal)
    sys.exit(args.fail_code)
deadline = time.monotonic() + 120
while args.hold and time.monotonic() < deadline:
    time.sleep(0.05)
'''


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env, timeout=30
    ).stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> Path:
    """A git repository at `path` with `files` committed."""
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "test commit")
    return path


def archive_files(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()
        }


def processes_under(root: Path) -> list[int]:
    """Live processes whose working directory is inside `root`: what still runs on the fake pod."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if Path(cwd).is_relative_to(root) and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


@dataclasses.dataclass
class FakePod:
    """A fake pod's directory, the environment that makes the launcher use it, and its record."""

    root: Path
    env: dict[str, str]
    num_workers: int
    coordinator_port: int

    def calls(self) -> list[list[str]]:
        path = self.root / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["argv"] for line in path.read_text().splitlines()]

    def ssh_calls(self) -> list[list[str]]:
        return [argv for argv in self.calls() if argv[3] == "ssh"]


MakePod = Callable[..., FakePod]


@pytest.fixture
def make_fake_pod(tmp_path: Path) -> Iterator[MakePod]:
    """Factory for fake pods under tmp_path; afterwards, nothing may still run on them."""
    pods: list[FakePod] = []

    def make(num_workers: int = 3, devices_per_worker: int = 2) -> FakePod:
        root = tmp_path / f"pod-{len(pods)}"
        root.mkdir()
        port = free_port()
        env = {name: value for name, value in os.environ.items() if name != "WANDB_API_KEY"}
        env.update(
            PATH=f"{FAKE_GCLOUD_BIN}{os.pathsep}{env.get('PATH', '')}",
            FAKE_GCLOUD_PYTHON=sys.executable,
            FAKE_GCLOUD_ROOT=str(root),
            FAKE_GCLOUD_NUM_WORKERS=str(num_workers),
            FAKE_GCLOUD_COORDINATOR_PORT=str(port),
            FAKE_GCLOUD_DEVICES_PER_WORKER=str(devices_per_worker),
            FAKE_GCLOUD_SSH_TIMEOUT_S="120",
            WANDB_MODE="disabled",
        )
        pods.append(FakePod(root, env, num_workers, port))
        return pods[-1]

    yield make
    leftovers = [pid for pod in pods for pid in processes_under(pod.root)]
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left running on the fake pod: {leftovers}"


def launcher_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "launch.tpu_pod", *TPU_FLAGS, *args]


def run_launcher(
    pod: FakePod, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        launcher_argv(*args),
        cwd=REPO_ROOT,
        env=env or pod.env,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )


def fake_pod_flags(repo: Path, log_dir: Path) -> list[str]:
    """Launcher flags of every fake-pod run: what to ship, where logs go, no venv set-up."""
    return ["--repo", str(repo), "--log_dir", str(log_dir), "--python", sys.executable, "--kill_grace", "5"]


def assert_secret_not_on_disk(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SECRET.encode() not in path.read_bytes(), f"WANDB_API_KEY written to {path}"


def standin_report(text: str) -> dict:
    """The stand-in's JSON line from a worker's log."""
    [line] = [line for line in text.splitlines() if line.startswith("stand-in {")]
    return json.loads(line.removeprefix("stand-in "))


@dataclasses.dataclass(frozen=True)
class PodCheckout:
    """A repository to ship to the fake pod, how to launch it, and what a good worker log holds."""

    repo: Path
    launcher_flags: tuple[str, ...]
    check_worker_log: Callable[[FakePod, int, str], None]


# The files of this repository that run on a worker, shipped with every stand-in.
WORKER_SIDE_FILES = ("harness/errors.py", "launch/__init__.py", "launch/failures.py", "launch/worker_run.py",
                     "launch/requirements.py", "launch/worker_setup.sh")


def standin_files(**extra: str) -> dict[str, str]:
    files = {name: (REPO_ROOT / name).read_text() for name in WORKER_SIDE_FILES}
    files.update({"harness/__init__.py": "", "harness/train.py": STANDIN_TRAIN, "README.md": "stand-in\n"})
    files.update(extra)
    return files


def standin_checkout(tmp_path: Path) -> PodCheckout:
    repo = make_repo(tmp_path / "standin-repo", standin_files())
    commit = git(repo, "rev-parse", "HEAD")

    def check(pod: FakePod, worker: int, log: str) -> None:
        report = standin_report(log)
        assert report == {
            "worker": worker,
            "num_workers": pod.num_workers,
            "coordinator": f"127.0.0.1:{pod.coordinator_port}",
            "config": "smoke",
            "extra": ["--steps=3", "--note=it's a test"],
            "key_sha": hashlib.sha256(SECRET.encode()).hexdigest()[:12],
            "cwd": str(pod.root / f"worker-{worker}" / "podharness" / "releases" / commit),
        }
        assert f"stand-in worker {worker} on stderr" in log

    return PodCheckout(repo, ("--preset", "smoke", "--", "--steps=3", "--note=it's a test"), check)


def real_harness_checkout(tmp_path: Path) -> PodCheckout:
    """This repository with the real harness, as it is on disk (tracked files only).

    The fake pod's workers share this machine's disk, so one checkpoint directory plays
    the shared bucket. Meant for a pod of 2 workers with 4 devices each.
    """

    def check(pod: FakePod, worker: int, log: str) -> None:
        assert log.strip(), f"worker {worker} wrote nothing"
        if worker == 0:
            assert f"Processes: {pod.num_workers} x 4 cpu devices" in log

    flags = ("--checkpoint_dir", str(tmp_path / "checkpoints"), "--run_dir", str(tmp_path / "run"))
    return PodCheckout(REPO_ROOT, ("--allow_dirty", "--preset", "local-2x4", "--", *flags), check)


def provisioning_steps(stderr: str, worker: int, num_workers: int) -> list[str]:
    """The launcher's progress lines for one worker, in order, without their times."""
    prefix = f"launch.tpu_pod: worker {worker} of {num_workers}: "
    lines = [line.removeprefix(prefix) for line in stderr.splitlines() if line.startswith(prefix)]
    assert all(re.search(r" \(\d+\.\d s\)$", line) for line in lines), lines
    return [re.sub(r" \(\d+\.\d s\)$", "", line) for line in lines]


def launcher_says(stderr: str) -> list[str]:
    """The launcher's own lines, less its provisioning progress."""
    progress = re.compile(r"launch\.tpu_pod: (worker \d+ of \d+: |all \d+ workers started the harness)")
    return [line for line in stderr.splitlines() if line.startswith("launch.tpu_pod: ") and not progress.match(line)]


def run_pod_and_check(checkout: PodCheckout, pod: FakePod, tmp_path: Path) -> None:
    """Launch `checkout` on `pod` (workers counted by describe); every worker must succeed."""
    log_dir = tmp_path / "logs"
    env = {**pod.env, "WANDB_API_KEY": SECRET}
    flags = fake_pod_flags(checkout.repo, log_dir)
    result = run_launcher(pod, *flags, *checkout.launcher_flags, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # Read back rather than asked of git: the repository may get new commits meanwhile.
    shipped = re.search(r"shipping commit ([0-9a-f]{40})", result.stdout)
    assert shipped, result.stdout
    deploy_ids = [path.name for path in (pod.root / "worker-0" / "podharness" / "releases").iterdir()]
    assert [deploy_id.removesuffix("-dirty") for deploy_id in deploy_ids] == [shipped[1]]
    verbs = [argv[3] for argv in pod.calls()]
    assert verbs == ["scp", "describe"] + ["ssh"] * pod.num_workers
    assert sorted(argv[9] for argv in pod.ssh_calls()) == [
        f"--worker={i}" for i in range(pod.num_workers)
    ]
    for worker in range(pod.num_workers):
        log = (log_dir / f"worker-{worker}.log").read_text()
        checkout.check_worker_log(pod, worker, log)
        merged = [
            line.removeprefix(f"[worker {worker}] ")
            for line in result.stdout.splitlines() + result.stderr.splitlines()
            if line.startswith(f"[worker {worker}] ")
        ]
        # Every line the worker wrote is on the terminal, its set-up steps in the launcher's words.
        steps = [line for line in log.splitlines() if line.startswith("podharness-step: ")]
        assert steps == ["podharness-step: release unpacked", "podharness-step: harness starting"]
        assert sorted(merged) == sorted(line for line in log.splitlines() if line not in steps)
        assert provisioning_steps(result.stderr, worker, pod.num_workers) == ["release unpacked", "harness starting"]
    assert re.search(rf"^launch\.tpu_pod: all {pod.num_workers} workers started the harness; the slowest was worker "
                     rf"\d \(\d+\.\d s\)$", result.stderr, re.MULTILINE), result.stderr
    assert_secret_not_on_disk(pod.root, log_dir)


def test_all_workers_succeed_with_per_worker_logs(make_fake_pod: MakePod, tmp_path: Path) -> None:
    run_pod_and_check(standin_checkout(tmp_path), make_fake_pod(), tmp_path)


def test_real_harness_runs_on_the_fake_pod(make_fake_pod: MakePod, tmp_path: Path) -> None:
    run_pod_and_check(
        real_harness_checkout(tmp_path), make_fake_pod(num_workers=2, devices_per_worker=4), tmp_path
    )


def test_preflight_runs_on_every_worker_of_the_fake_pod(make_fake_pod: MakePod, tmp_path: Path) -> None:
    """`--preflight` runs harness.preflight instead of training; worker 0 writes the report."""
    pod = make_fake_pod(num_workers=2, devices_per_worker=4)
    run_dir = tmp_path / "run"
    flags = ["--allow_dirty", "--preflight", "--preset", "local-2x4", "--", "--checkpoint_dir",
             str(tmp_path / "checkpoints"), "--run_dir", str(run_dir), "--checks", "consistency,devices,storage"]
    result = run_launcher(pod, *fake_pod_flags(REPO_ROOT, tmp_path / "logs"), *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((run_dir / "preflight.json").read_text())
    assert report["verdict"] == "PASS" and [host["host"] for host in report["hosts"]] == [0, 1]
    assert {check["check"]: check["status"] for check in report["checks"]}["devices"] == "PASS"
    lines = (result.stdout + result.stderr).splitlines()
    assert "[worker 0] harness-preflight: PASS: 2 host(s), every check passed" in lines
    assert "[worker 1] harness-preflight: seen from host 1: PASS: 2 host(s), every check passed" in lines
    assert processes_under(pod.root) == []


def test_a_failing_worker_stops_the_others(make_fake_pod: MakePod, tmp_path: Path) -> None:
    pod = make_fake_pod()
    checkout = standin_checkout(tmp_path)
    flags = shlex.split("--num_workers 3 --preset smoke -- --hold --fail_worker=1")
    result = run_launcher(pod, *fake_pod_flags(checkout.repo, tmp_path / "logs"), *flags)
    assert result.returncode == 3, result.stdout + result.stderr
    launcher_lines = launcher_says(result.stderr)
    assert launcher_lines == ["launch.tpu_pod: worker 1 failed (exit code 3)",
                              "launch.tpu_pod: stopping the harness on all workers"]
    stop_calls = [argv for argv in pod.ssh_calls() if "--worker=all" in argv]
    assert len(stop_calls) == 1
    assert processes_under(pod.root) == []


def test_the_worker_a_survivor_names_is_reported(make_fake_pod: MakePod, tmp_path: Path) -> None:
    """Worker 0 plays a survivor whose watchdog named worker 1 (the real line, exit 42)."""
    pod = make_fake_pod(num_workers=2)
    checkout = standin_checkout(tmp_path)
    report = lost_hosts_line(0, [1], "no heartbeat for 6 s")
    flags = ["--num_workers", "2", "--preset", "smoke", "--", "--hold", "--fail_worker=0", f"--report={report}",
             f"--fail_code={EXIT_HOST_LOST}"]
    result = run_launcher(pod, *fake_pod_flags(checkout.repo, tmp_path / "logs"), *flags)
    assert result.returncode == EXIT_HOST_LOST, result.stdout + result.stderr
    assert f"[worker 0] {report}" in result.stderr.splitlines()
    launcher_lines = launcher_says(result.stderr)
    assert launcher_lines[:1] == [
        f"launch.tpu_pod: worker 1 stopped responding (named by worker 0); worker 0 failed (exit code {EXIT_HOST_LOST})"]
    assert processes_under(pod.root) == []


def test_sigterm_stops_the_harness_on_every_worker_gracefully(
    make_fake_pod: MakePod, tmp_path: Path
) -> None:
    """Preemption through the pod launcher: the harness gets SIGTERM remotely and exits 0."""
    pod = make_fake_pod(num_workers=2)
    checkout = standin_checkout(tmp_path)
    flags = [*fake_pod_flags(checkout.repo, tmp_path / "logs"), "--num_workers", "2", "--", "--hold"]
    launcher = subprocess.Popen(
        launcher_argv(*flags),
        cwd=REPO_ROOT,
        env=pod.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid_files = [pod.root / f"worker-{i}" / "standin.pid" for i in range(2)]
        wait_until(lambda: all(path.exists() for path in pid_files), "the stand-ins", timeout=LAUNCH_TIMEOUT_S,
                   process=launcher)
        launcher.send_signal(signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        launcher.kill()
        launcher.wait(timeout=LAUNCH_TIMEOUT_S)
    assert launcher.returncode == 0, stdout + stderr
    assert "launch.tpu_pod: stop requested" in stderr
    assert processes_under(pod.root) == []


def test_a_stale_harness_from_an_earlier_launch_is_stopped(
    make_fake_pod: MakePod, tmp_path: Path
) -> None:
    pod = make_fake_pod(num_workers=1)
    checkout = standin_checkout(tmp_path)
    deploy_root = pod.root / "worker-0" / "podharness"
    deploy_root.mkdir(parents=True)
    stale = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "harness.train"],
        cwd=deploy_root,
        start_new_session=True,
    )
    try:
        (deploy_root / "harness.pid").write_text(str(stale.pid))
        flags = fake_pod_flags(checkout.repo, tmp_path / "logs")
        result = run_launcher(pod, *flags, "--num_workers", "1")
        assert result.returncode == 0, result.stdout + result.stderr
        assert stale.wait(timeout=10) == -signal.SIGTERM
        assert f"stopping harness process {stale.pid}" in result.stderr
    finally:
        stale.kill()
        stale.wait(timeout=10)


def test_dry_run_prints_scp_then_one_ssh_per_worker_with_the_key_masked(
    make_fake_pod: MakePod, tmp_path: Path
) -> None:
    pod = make_fake_pod()
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    commit = git(repo, "rev-parse", "HEAD")
    env = {**pod.env, "WANDB_API_KEY": SECRET}
    flags = ["--num_workers", "2", "--preset", "smoke", "--dry-run", "--", "--steps=3", "--note=a b"]
    result = run_launcher(pod, "--repo", str(repo), *flags, env=env)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "WANDB_API_KEY=***" in result.stdout
    commands = [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]
    archive = f"podharness-{commit}.tar.gz"
    location = ["--zone", "zone-z", "--project", "proj-p"]
    assert commands[0] == ["git", "-C", str(repo), "archive", "--format=tar.gz", commit, ">", archive]
    assert commands[1] == [*GCLOUD_TPU_VM, "scp", archive, f"pod-a:{archive}", *location, "--worker=all"]
    assert len(commands) == 5 and commands[-1] == ["wait"]
    for worker, argv in enumerate(commands[2:4]):
        assert argv[:12] == [
            *GCLOUD_TPU_VM,
            "ssh",
            "pod-a",
            *location,
            f"--worker={worker}",
            "--command",
        ]
        assert argv[13:] == ["<<<", "$WANDB_API_KEY", "&"]
        bash, dash_c, script = shlex.split(argv[12])
        assert (bash, dash_c) == ("bash", "-c")
        assert "read -r wandb_key" in script
        assert script.endswith(
            """-- "$python" -m harness.train --config smoke --steps=3 '--note=a b'"""
        )
    assert pod.calls() == []


@pytest.mark.parametrize("dirty, workers", [(False, ["--num_workers", "2"]), (True, [])],
                         ids=["clean-2-workers", "dirty-workers-from-describe"])
def test_the_dry_run_runs_as_printed(make_fake_pod: MakePod, tmp_path: Path, dirty: bool, workers: list[str]) -> None:
    """Its lines, run by bash in an empty directory, launch the pod: build, copy, one ssh each."""
    pod = make_fake_pod(num_workers=2)
    checkout = standin_checkout(tmp_path)
    if dirty:
        (checkout.repo / "README.md").write_text("changed on disk\n")
    env = {**pod.env, "WANDB_API_KEY": SECRET}
    flags = ["--repo", str(checkout.repo), "--python", sys.executable, *workers, "--allow_dirty",
             "--dry-run", *checkout.launcher_flags]
    printed = run_launcher(pod, *flags, env=env)
    assert printed.returncode == 0, printed.stderr
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    script = "set -euo pipefail\n" + "\n".join(
        line for line in printed.stdout.splitlines() if not line.startswith("#"))
    result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    for worker in range(2):
        home = pod.root / f"worker-{worker}" / "podharness"
        [release] = (home / "releases").iterdir()
        assert release.name.endswith("-dirty") == dirty
        assert (release / "README.md").read_text() == ("changed on disk\n" if dirty else "stand-in\n")
        [run_dir] = (home / "runs").iterdir()
        report = standin_report((run_dir / "stdout.log").read_text())
        assert (report["worker"], report["cwd"], report["extra"]) == (worker, str(release), ["--steps=3", "--note=it's a test"])
        assert report["key_sha"] == hashlib.sha256(SECRET.encode()).hexdigest()[:12]


def test_dry_run_without_num_workers_shows_the_describe_command(
    make_fake_pod: MakePod, tmp_path: Path
) -> None:
    pod = make_fake_pod()
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    result = run_launcher(pod, "--repo", str(repo), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert lines[2].startswith('workers="$(gcloud compute tpus tpu-vm describe ')
    assert lines[3].startswith('for worker in $(seq 0 $((workers - 1))); do gcloud compute tpus tpu-vm ssh ')
    assert lines[4] == "wait"
    describe = shlex.split(lines[2].removeprefix('workers="$(').split(" | ")[0])
    assert describe[4:] == ["describe", "pod-a", "--zone", "zone-z", "--project", "proj-p", "--format=json"]
    assert "WANDB_API_KEY" not in result.stdout
    assert pod.calls() == []


def test_archive_contains_exactly_the_committed_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", "pkg/mod.py": "x = 1\n"})
    (repo / "untracked.txt").write_text("never shipped\n")
    snapshot = take_snapshot(repo / "pkg")
    assert snapshot.repo == repo and snapshot.dirty_files == ()
    assert snapshot.commit == snapshot.deploy_id == git(repo, "rev-parse", "HEAD")
    write_archive(snapshot, tmp_path / "code.tar.gz")
    assert archive_files(tmp_path / "code.tar.gz") == {"README.md": b"hi\n", "pkg/mod.py": b"x = 1\n"}


def test_allow_dirty_ships_the_tracked_files_as_they_are_on_disk(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo", {"README.md": "hi\n", "pkg/mod.py": "x = 1\n", "old.txt": "old\n"}
    )
    (repo / "README.md").write_text("changed\n")
    (repo / "old.txt").unlink()
    (repo / "untracked.txt").write_text("never shipped\n")
    snapshot = take_snapshot(repo)
    assert sorted(snapshot.dirty_files) == ["README.md", "old.txt"]
    assert snapshot.deploy_id == f"{snapshot.commit}-dirty"
    write_archive(snapshot, tmp_path / "code.tar.gz")
    assert archive_files(tmp_path / "code.tar.gz") == {
        "README.md": b"changed\n",
        "pkg/mod.py": b"x = 1\n",
    }


def test_a_dirty_tree_is_refused_with_exit_2(make_fake_pod: MakePod, tmp_path: Path) -> None:
    pod = make_fake_pod()
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (repo / "README.md").write_text("changed\n")
    result = run_launcher(pod, "--repo", str(repo), "--num_workers", "3")
    assert result.returncode == 2
    assert "uncommitted changes to tracked files (README.md)" in result.stderr
    assert "--allow_dirty" in result.stderr
    assert pod.calls() == []


# --- Provisioning stock workers (launch/worker_setup.sh) --------------------------------

PROVISIONED_TRAIN = '''\
"""Stand-in for harness.train that needs its requirement installed: reports the Python it runs on."""
import json, os, sys
import podharness_standin_dep
report = {"worker": int(os.environ["HARNESS_PROCESS_ID"]), "python": "%d.%d" % sys.version_info[:2],
          "prefix": sys.prefix, "dep": podharness_standin_dep.VERSION}
print("provisioned " + json.dumps(report), flush=True)
'''
PROVISIONED_SETUP_CFG = """\
[options]
install_requires =
    podharness-standin-dep==1.0

[options.extras_require]
tpu =
"""


def provisioned_repo(tmp_path: Path) -> Path:
    """A repository whose harness needs podharness-standin-dep (no --python: workers provision)."""
    return make_repo(tmp_path / "provisioned-repo",
                     standin_files(**{"harness/train.py": PROVISIONED_TRAIN, "setup.cfg": PROVISIONED_SETUP_CFG}))


def stock_pod(make_fake_pod: MakePod, tmp_path: Path, *, num_workers: int = 1, internet: bool,
              pip: bool = True, python311: bool = False) -> FakePod:
    """Workers like a fresh Ubuntu 22.04 TPU VM: python3 is 3.10 without venv; "PyPI" has the
    stand-in's requirement and is reachable only with `internet`."""
    pod = make_fake_pod(num_workers=num_workers)
    pypi = tmp_path / "pypi"
    standin_dep_wheel(pypi)
    pod.env.update(
        FAKE_GCLOUD_WORKER_PATH=stock_worker_path(tmp_path / "worker-bin", with_python311=python311),
        FAKE_WORKER_INTERNET="1" if internet else "0",
        FAKE_WORKER_PIP="1" if pip else "0",
        FAKE_WORKER_PYPI=str(pypi),
        FAKE_WORKER_REAL_PYTHON=base_python(),
    )
    return pod


def build_wheelhouse(repo: Path, tmp_path: Path) -> Path:
    """launch.wheelhouse from local wheels only (no network): the requirement and uv's wheel."""
    local = tmp_path / "local-wheels"
    standin_dep_wheel(local)
    fake_uv_wheel(local)
    out = tmp_path / "wheelhouse"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    env = {name: value for name, value in env.items() if name != "PIP_FIND_LINKS"}
    result = subprocess.run(
        [sys.executable, "-m", "launch.wheelhouse", "--repo", str(repo), "--out", str(out), "--no_index",
         "--find_links", str(local)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(path.name for path in out.iterdir()) == [
        "podharness_standin_dep-1.0-py3-none-any.whl", "requirements.txt", "uv-0.13.8-py3-none-any.whl"]
    return out


def provisioned_reports(pod: FakePod) -> list[dict]:
    """Each worker's stand-in report, from the worker's own log of its latest run."""
    reports = []
    for worker in range(pod.num_workers):
        runs = sorted((pod.root / f"worker-{worker}" / "podharness" / "runs").iterdir(), key=lambda p: p.name)
        [line] = [line for line in (runs[-1] / "stdout.log").read_text().splitlines()
                  if line.startswith("provisioned ")]
        reports.append(json.loads(line.removeprefix("provisioned ")))
    return reports


def provision_flags(repo: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--repo", str(repo), "--log_dir", str(tmp_path / "logs"), "--kill_grace", "5", *extra]


def worker_log(pod: FakePod, worker: int, name: str) -> list[str]:
    path = pod.root / f"worker-{worker}" / name
    return path.read_text().splitlines() if path.exists() else []


def test_stock_python310_workers_are_provisioned_with_uv_and_reuse_the_venv(
    make_fake_pod: MakePod, tmp_path: Path
) -> None:
    pod = stock_pod(make_fake_pod, tmp_path, num_workers=2, internet=True)
    repo = provisioned_repo(tmp_path)
    result = run_launcher(pod, *provision_flags(repo, tmp_path, "--num_workers", "2"))
    assert result.returncode == 0, result.stdout + result.stderr
    for worker, report in enumerate(provisioned_reports(pod)):
        venv = pod.root / f"worker-{worker}" / "podharness" / "venv"
        assert report == {"worker": worker, "python": "3.11", "prefix": str(venv), "dep": "1.0"}
        said = [line.removeprefix(f"[worker {worker}] ") for line in result.stderr.splitlines()
                if line.startswith(f"[worker {worker}] podharness: ")]
        assert said[:5] == [
            f"podharness: worker python3: {pod.env['FAKE_GCLOUD_WORKER_PATH']}/python3 (3.10.12): too old:"
            " the harness needs Python >= 3.11",
            "podharness: worker python3 venv/ensurepip: missing (Ubuntu package python3-venv)",
            "podharness: worker python3 pip: available",
            "podharness: worker uv: not found",
            "podharness: no Python >= 3.11 with venv/ensurepip here: provisioning with uv",
        ]
        assert "podharness: installing uv: python3 -m pip install --user uv (downloads uv from PyPI)" in said
        assert provisioning_steps(result.stderr, worker, 2) == [
            "release unpacked", "venv ready (Python 3.11.7)", "requirements installed", "harness starting"]
        uv_calls = worker_log(pod, worker, "fake-uv.log")
        assert uv_calls[:2] == ["python find 3.11", "python install 3.11"]
        assert uv_calls[2] == f"venv -q --python 3.11 {venv}"
        assert uv_calls[3] == f"pip install -q --python {venv}/bin/python -r {venv}.requirements.txt"

    again = run_launcher(pod, *provision_flags(repo, tmp_path, "--num_workers", "2"))
    assert again.returncode == 0, again.stdout + again.stderr
    for worker in range(2):
        assert f"[worker {worker}] podharness: reusing {pod.root}/worker-{worker}/podharness/venv:" \
               " same Python and requirements as last time" in again.stderr.splitlines()
        assert len(worker_log(pod, worker, "fake-uv.log")) == 4, "the second launch installed something"
        assert provisioning_steps(again.stderr, worker, 2) == [
            "release unpacked", "venv ready (Python 3.11.7)", "requirements reused", "harness starting"]


def test_an_offline_python310_worker_installs_from_the_wheelhouse(make_fake_pod: MakePod, tmp_path: Path) -> None:
    """No internet, no pip: uv comes out of the wheelhouse, Python from --python_dist,
    the packages from the wheelhouse with --no-index."""
    pod = stock_pod(make_fake_pod, tmp_path, internet=False, pip=False)
    repo = provisioned_repo(tmp_path)
    wheelhouse = build_wheelhouse(repo, tmp_path)
    dist = python_dist(tmp_path / "dist")
    result = run_launcher(pod, *provision_flags(repo, tmp_path, "--num_workers", "1", "--provision", "uv",
                                                "--wheelhouse", str(wheelhouse), "--python_dist", str(dist)))
    assert result.returncode == 0, result.stdout + result.stderr
    venv = pod.root / "worker-0" / "podharness" / "venv"
    assert provisioned_reports(pod) == [{"worker": 0, "python": "3.11", "prefix": str(venv), "dep": "1.0"}]
    home_wheelhouse = pod.root / "worker-0" / "podharness" / "wheelhouse"
    assert worker_log(pod, 0, "fake-uv.log") == [
        f"venv -q --python {pod.root}/worker-0/podharness/python-dist/python/bin/python3 {venv}",
        f"pip install -q --python {venv}/bin/python --no-index --find-links {home_wheelhouse}"
        f" -r {venv}.requirements.txt",
    ]
    assert "[worker 0] podharness: worker python3 pip: missing (Ubuntu package python3-pip)" in result.stderr
    assert "[worker 0] podharness: unpacking uv from the wheelhouse (uv-0.13.8-py3-none-any.whl)" in result.stderr
    assert [argv[3] for argv in pod.calls()[:3]] == ["scp", "scp", "scp"]
    copied = [re.sub(r"\(\d+\.\d (MiB|s)\)", r"(N \1)", line) for line in result.stdout.splitlines()
              if line.startswith(("launch.tpu_pod: copying ", "launch.tpu_pod: copied "))]
    assert copied == [f"launch.tpu_pod: {verb} {what}{size}" for what in
                      ("the archive", f"the wheelhouse {wheelhouse}", f"the Python {dist}")
                      for verb, size in (("copying", " (N MiB) to every worker"), ("copied", " (N s)"))]


@pytest.mark.parametrize("case", ["offline-no-python-dist", "offline-no-pip", "system-only"])
def test_a_worker_that_cannot_be_provisioned_says_what_is_missing(
    make_fake_pod: MakePod, tmp_path: Path, case: str
) -> None:
    pod = stock_pod(make_fake_pod, tmp_path, internet=False, pip=False)
    repo = provisioned_repo(tmp_path)
    extra, expected = {
        "offline-no-python-dist": (["--wheelhouse", str(build_wheelhouse(repo, tmp_path))],
                                   "no Python >= 3.11 on this worker, and offline (--wheelhouse): pass"
                                   " --python_dist, a python-build-standalone install_only archive"),
        "offline-no-pip": ([], "no uv on this worker and no pip to install it: install python3-pip,"
                               " or pass --wheelhouse (it carries uv)"),
        "system-only": (["--provision", "system"],
                        "no Python >= 3.11 with venv/ensurepip on this worker: install python3.11 and"
                        " python3.11-venv, pass --python_dist, or use --provision uv"),
    }[case]
    result = run_launcher(pod, *provision_flags(repo, tmp_path, "--num_workers", "1", *extra))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"[worker 0] podharness: error: {expected}" in result.stderr.splitlines()
    assert "launch.tpu_pod: worker 0 failed (exit code 1)" in result.stderr


def test_a_worker_with_python311_gets_a_plain_venv_from_the_wheelhouse(make_fake_pod: MakePod, tmp_path: Path) -> None:
    pod = stock_pod(make_fake_pod, tmp_path, internet=False, pip=False, python311=True)
    repo = provisioned_repo(tmp_path)
    wheelhouse = build_wheelhouse(repo, tmp_path)
    result = run_launcher(pod, *provision_flags(repo, tmp_path, "--num_workers", "1", "--wheelhouse", str(wheelhouse)))
    assert result.returncode == 0, result.stdout + result.stderr
    venv = pod.root / "worker-0" / "podharness" / "venv"
    assert provisioned_reports(pod) == [{"worker": 0, "python": "3.11", "prefix": str(venv), "dep": "1.0"}]
    python311 = f"{pod.env['FAKE_GCLOUD_WORKER_PATH']}/python3.11"
    assert f"[worker 0] podharness: making the venv {venv} with {python311} (3.11.7)" in result.stderr.splitlines() \
        or any(line.startswith(f"[worker 0] podharness: making the venv {venv} with {python311}")
               for line in result.stderr.splitlines())
    assert worker_log(pod, 0, "fake-uv.log") == []


# --- Housekeeping, signals, relaunch after a lost launcher ------------------------------

def test_each_worker_keeps_the_newest_releases_only(make_fake_pod: MakePod, tmp_path: Path) -> None:
    pod = make_fake_pod(num_workers=1)
    checkout = standin_checkout(tmp_path)
    home = pod.root / "worker-0" / "podharness"
    old_layout = [home / ("a" * 40), home / f"{'b' * 40}-dirty"]  # before releases/ existed
    for path in [*old_layout, home / "venv"]:
        path.mkdir(parents=True)
    shipped = []
    for i in range(4):
        if i:
            (checkout.repo / "README.md").write_text(f"release {i}\n")
            git(checkout.repo, "commit", "-q", "-am", f"release {i}")
        shipped.append(git(checkout.repo, "rev-parse", "HEAD"))
        result = run_launcher(pod, *fake_pod_flags(checkout.repo, tmp_path / f"logs-{i}"), "--num_workers", "1",
                              "--keep_releases", "2")
        assert result.returncode == 0, result.stdout + result.stderr
    releases = pod.root / "worker-0" / "podharness" / "releases"
    assert sorted(path.name for path in releases.iterdir()) == sorted(shipped[-2:])
    assert len(list((pod.root / "worker-0" / "podharness" / "runs").iterdir())) == 4
    assert not any(path.exists() for path in old_layout) and (home / "venv").is_dir()


def test_a_worker_killed_by_a_signal_is_reported_as_the_signal(make_fake_pod: MakePod, tmp_path: Path) -> None:
    pod = make_fake_pod(num_workers=2)
    checkout = standin_checkout(tmp_path)
    flags = ["--num_workers", "2", "--", "--hold", "--fail_worker=1", f"--fail_by_signal={int(signal.SIGKILL)}"]
    result = run_launcher(pod, *fake_pod_flags(checkout.repo, tmp_path / "logs"), *flags)
    assert result.returncode == 128 + signal.SIGKILL, result.stdout + result.stderr
    assert "launch.tpu_pod: worker 1 failed (killed by SIGKILL)" in result.stderr.splitlines()
    assert processes_under(pod.root) == []


def test_a_relaunch_stops_the_harness_a_killed_launcher_left_running(make_fake_pod: MakePod, tmp_path: Path) -> None:
    """SIGKILL the launcher mid-run: the harnesses keep running (their output goes to the
    workers' files, not into the dead session); the next launch stops them (exit 42) and runs."""
    pod = make_fake_pod(num_workers=2)
    checkout = standin_checkout(tmp_path)
    flags = [*fake_pod_flags(checkout.repo, tmp_path / "logs-1"), "--num_workers", "2", "--", "--hold"]
    first = subprocess.Popen(launcher_argv(*flags), cwd=REPO_ROOT, env=pod.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    pid_files = [pod.root / f"worker-{i}" / "standin.pid" for i in range(2)]
    try:
        wait_until(lambda: all(path.exists() for path in pid_files), "the stand-ins", timeout=LAUNCH_TIMEOUT_S,
                   process=first)
        first.kill()
        first.wait(timeout=LAUNCH_TIMEOUT_S)
    finally:
        first.kill()
    stale = [int(path.read_text()) for path in pid_files]
    assert all(pid_alive(pid) for pid in stale), "the harnesses died with the launcher"
    started = time.monotonic()
    result = run_launcher(pod, *fake_pod_flags(checkout.repo, tmp_path / "logs-2"), "--num_workers", "2")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    for worker, pid in enumerate(stale):
        assert f"[worker {worker}] podharness: stopping harness process {pid}" in result.stderr.splitlines()
        assert not pid_alive(pid)
    print(f"relaunch after a SIGKILLed launcher (stand-in harness): {took:.1f} s")


@pytest.mark.soak
def test_a_relaunch_after_a_killed_launcher_resumes_within_seconds_with_the_real_harness(
    make_fake_pod: MakePod, tmp_path: Path
) -> None:
    """The real harness on 2 workers: SIGKILL the launcher mid-run, relaunch with --resume.
    The stale harnesses agree on a step, save there and exit 42 on the relaunch's SIGTERM;
    the relaunch resumes from that checkpoint. Prints the relaunch's time next to a plain
    launch of the same run; asserts only a generous bound (the stop grace is 60 s)."""
    pod = make_fake_pod(num_workers=2, devices_per_worker=4)
    checkpoints, run_dir, cache = tmp_path / "checkpoints", tmp_path / "run", tmp_path / "cache"
    harness = ["--checkpoint_dir", str(checkpoints), "--run_dir", str(run_dir), "--log_interval", "1",
               "--save_interval", "100000", "--no_wandb", "--compilation_cache_dir", str(cache)]

    def flags(name: str, *extra: str) -> list[str]:
        return ["--repo", str(REPO_ROOT), "--allow_dirty", "--python", sys.executable, "--num_workers", "2",
                "--kill_grace", "60", "--log_dir", str(tmp_path / name), "--preset", "local-2x4", "--",
                *harness, *extra]

    log = tmp_path / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen(launcher_argv(*flags("logs-1", "--num_train_steps", "100000")), cwd=REPO_ROOT,
                                 env=pod.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: re.search(r"\[worker 0\] Step +\d+:", log.read_text()) is not None, "a step",
                   timeout=LAUNCH_TIMEOUT_S, process=first)
        first.kill()
        first.wait(timeout=LAUNCH_TIMEOUT_S)
    finally:
        first.kill()

    def seconds_to_first_step(name: str) -> tuple[float, str]:
        """Launch with --resume, wait for worker 0's first step, stop the pod (SIGTERM)."""
        out_log = tmp_path / f"{name}.log"
        started = time.monotonic()
        with out_log.open("wb") as out:
            launcher = subprocess.Popen(launcher_argv(*flags(name, "--resume", "--num_train_steps", "100000")),
                                        cwd=REPO_ROOT, env=pod.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: re.search(r"\[worker 0\] Step +\d+:", out_log.read_text()) is not None,
                       "the first step", timeout=LAUNCH_TIMEOUT_S, process=launcher)
            took = time.monotonic() - started
            launcher.send_signal(signal.SIGTERM)
            assert launcher.wait(timeout=LAUNCH_TIMEOUT_S) == 0, out_log.read_text()[-3000:]
        finally:
            launcher.kill()
            launcher.wait(timeout=LAUNCH_TIMEOUT_S)
        return took, out_log.read_text()

    relaunch_s, relaunched = seconds_to_first_step("relaunch")
    plain_s, _ = seconds_to_first_step("plain")
    print(f"\nfirst step after launch: relaunch over a killed launcher's harnesses {relaunch_s:.1f} s,"
          f" plain launch {plain_s:.1f} s")
    assert re.search(r"\[worker 0\] Resumed from checkpoint at step \d+", relaunched), relaunched[-3000:]
    assert "podharness: stopping harness process" in relaunched
    assert relaunch_s - plain_s < 30, (relaunch_s, plain_s)


def test_the_dry_run_of_an_offline_launch_runs_as_printed(make_fake_pod: MakePod, tmp_path: Path) -> None:
    """With --wheelhouse and --python_dist the printed lines also pack and copy those."""
    pod = stock_pod(make_fake_pod, tmp_path, internet=False, pip=False)
    repo = provisioned_repo(tmp_path)
    wheelhouse = build_wheelhouse(repo, tmp_path)
    dist = python_dist(tmp_path / "dist")
    printed = run_launcher(pod, *provision_flags(repo, tmp_path, "--num_workers", "1", "--provision", "uv",
                                                 "--wheelhouse", str(wheelhouse), "--python_dist", str(dist),
                                                 "--dry-run"))
    assert printed.returncode == 0, printed.stderr
    commands = [line for line in printed.stdout.splitlines() if not line.startswith("#")]
    assert [shlex.split(line)[:1] + shlex.split(line)[3:5] for line in commands[:5]] == [
        ["git", "archive", "--format=tar.gz"], ["gcloud", "tpu-vm", "scp"], ["tar", "-C", str(wheelhouse)],
        ["gcloud", "tpu-vm", "scp"], ["gcloud", "tpu-vm", "scp"]]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(commands)], cwd=workdir,
                            env=pod.env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    venv = pod.root / "worker-0" / "podharness" / "venv"
    assert provisioned_reports(pod) == [{"worker": 0, "python": "3.11", "prefix": str(venv), "dep": "1.0"}]
