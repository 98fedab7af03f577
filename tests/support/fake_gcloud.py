"""A fake `gcloud compute tpus tpu-vm` that emulates a TPU pod on this machine, for tests.

Tests put tests/support/bin first on PATH; its `gcloud` runs this file with
$FAKE_GCLOUD_PYTHON. It is a standalone script (stdlib only) because it runs outside the
test process. Environment:

  FAKE_GCLOUD_ROOT                required; worker i lives in <root>/worker-<i>, its HOME
  FAKE_GCLOUD_NUM_WORKERS         workers in the pod (default 1)
  FAKE_GCLOUD_COORDINATOR_PORT    port of the jax coordinator all workers share (for ssh)
  FAKE_GCLOUD_DEVICES_PER_WORKER  fake CPU devices per worker (default 1)
  FAKE_GCLOUD_SSH_TIMEOUT_S       bound on one ssh command (default 600)
  FAKE_GCLOUD_WORKER_PATH         when set, a stock worker: the command's PATH is exactly
                                  this (tests/support/fake_worker.py builds one: no network
                                  tools, a python3 that is 3.10), pip reads no config, and
                                  "the internet" is FAKE_WORKER_PYPI when FAKE_WORKER_INTERNET=1

Supported: `describe NAME` (JSON with N networkEndpoints), `scp SRC NAME:DEST
--worker=W` (copies to <root>/worker-<i>/DEST), `ssh NAME --worker=W --command CMD` (runs
`bash -c CMD` in the worker's directory). ssh gives the command the environment a TPU
pod's metadata gives jax, in the form harness/runtime/distributed.py reads for a local pod:
HARNESS_COORDINATOR_ADDRESS, HARNESS_NUM_PROCESSES, HARNESS_PROCESS_ID, JAX_PLATFORMS=cpu
and the XLA device-count flag. Every invocation's argv goes to <root>/calls.jsonl.

As with real ssh, the worker's command runs in its own session and keeps running when
this process (the "local ssh") is killed; only a command sent to the worker stops it.
stdin is passed through to the command.
"""

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
SSH_ERROR = 255
POLL_S = 0.05


def fail(message: str) -> int:
    print(f"ERROR: (fake gcloud) {message}", file=sys.stderr)
    return 1


def record_call(root: Path, argv: list[str]) -> None:
    """Append one JSON line; a lock keeps concurrent invocations' lines whole."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "calls.jsonl", "a", encoding="utf-8") as calls:
        fcntl.flock(calls, fcntl.LOCK_EX)
        calls.write(json.dumps({"argv": argv, "cwd": os.getcwd()}) + "\n")


def num_workers() -> int:
    return int(os.environ.get("FAKE_GCLOUD_NUM_WORKERS", "1"))


def worker_dir(root: Path, worker: int) -> Path:
    path = root / f"worker-{worker}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def selected_workers(spec: str) -> list[int]:
    """`all`, `3` or `0,2`, as gcloud's --worker accepts; raises ValueError when out of range."""
    workers = list(range(num_workers())) if spec == "all" else [int(part) for part in spec.split(",")]
    if any(not 0 <= worker < num_workers() for worker in workers):
        raise ValueError(f"invalid --worker={spec} for a pod of {num_workers()} workers")
    return workers


def describe(args: argparse.Namespace) -> int:
    endpoints = [{"ipAddress": f"10.0.0.{2 + i}", "port": 8470} for i in range(num_workers())]
    node = {
        "name": f"projects/{args.project}/locations/{args.zone}/nodes/{args.positional[0]}",
        "state": "READY",
        "networkEndpoints": endpoints,
    }
    print(json.dumps(node, indent=2))
    return 0


def remote_path(worker_home: Path, spec: str) -> Path:
    """Where NAME:PATH lands on a worker: relative paths (and ~/) are under its home."""
    _, _, path = spec.partition(":")
    path = path.removeprefix("~/").lstrip("/")
    return worker_home / path if path else worker_home


def scp(root: Path, args: argparse.Namespace) -> int:
    *sources, dest = args.positional
    if not sources or ":" not in dest:
        return fail("fake scp only copies local files to NAME:DEST")
    for worker in selected_workers(args.worker):
        target = remote_path(worker_dir(root, worker), dest)
        for source in map(Path, sources):
            destination = target / source.name if target.is_dir() else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    return 0


def with_device_count(xla_flags: str, device_count: int) -> str:
    kept = [flag for flag in xla_flags.split() if not flag.startswith(DEVICE_COUNT_FLAG)]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={device_count}"])


def stock_worker_environment(env: dict[str, str], path: str) -> dict[str, str]:
    """What a fresh TPU VM has: its own PATH, no virtualenv, pip without this machine's config;
    pip reaches "PyPI" (a local directory of wheels) only when the worker has internet."""
    env = {name: value for name, value in env.items()
           if not name.startswith(("PIP_", "UV_")) and name not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH=path, PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if env.get("FAKE_WORKER_INTERNET") == "1" and env.get("FAKE_WORKER_PYPI"):
        env["PIP_FIND_LINKS"] = env["FAKE_WORKER_PYPI"]
    return env


def worker_environment(root: Path, worker: int) -> dict[str, str]:
    port = os.environ.get("FAKE_GCLOUD_COORDINATOR_PORT")
    if not port:
        raise ValueError("FAKE_GCLOUD_COORDINATOR_PORT is not set")
    env = dict(os.environ)
    if os.environ.get("FAKE_GCLOUD_WORKER_PATH"):
        env = stock_worker_environment(env, os.environ["FAKE_GCLOUD_WORKER_PATH"])
    env.update(
        HOME=str(worker_dir(root, worker)),
        HARNESS_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        HARNESS_NUM_PROCESSES=str(num_workers()),
        HARNESS_PROCESS_ID=str(worker),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=with_device_count(
            os.environ.get("XLA_FLAGS", ""), int(os.environ.get("FAKE_GCLOUD_DEVICES_PER_WORKER", "1"))
        ),
    )
    return env


def wait_bounded(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    """Wait for the worker commands; past the timeout kill them and report 124."""
    deadline = time.monotonic() + timeout
    while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    codes = []
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
            print(f"ERROR: (fake gcloud) ssh command ran past {timeout:g}s", file=sys.stderr)
            codes.append(124)
        else:
            codes.append(process.returncode)
    return codes


def ssh(root: Path, args: argparse.Namespace) -> int:
    if args.command is None:
        return fail("fake ssh needs --command")
    processes = [
        subprocess.Popen(
            ["bash", "-c", args.command],
            cwd=worker_dir(root, worker),
            env=worker_environment(root, worker),
            start_new_session=True,
        )
        for worker in selected_workers(args.worker)
    ]
    codes = wait_bounded(processes, float(os.environ.get("FAKE_GCLOUD_SSH_TIMEOUT_S", "600")))
    # Like OpenSSH: the remote exit status, or 255 when the remote side died by a signal.
    statuses = [SSH_ERROR if code < 0 else code for code in codes]
    return next((status for status in statuses if status != 0), 0)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gcloud compute tpus tpu-vm")
    parser.add_argument("verb", choices=["describe", "scp", "ssh"])
    parser.add_argument("positional", nargs="*")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--worker", default="0")
    parser.add_argument("--command")
    parser.add_argument("--format")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str]) -> int:
    root_env = os.environ.get("FAKE_GCLOUD_ROOT")
    if not root_env:
        return fail("FAKE_GCLOUD_ROOT is not set")
    root = Path(root_env)
    record_call(root, argv)
    if argv[:3] != ["compute", "tpus", "tpu-vm"]:
        return fail(f"only `compute tpus tpu-vm` is emulated, not {argv[:3]}")
    args = parse(argv[3:])
    if not args.positional:
        return fail(f"{args.verb} needs a TPU name")
    try:
        if args.verb == "describe":
            return describe(args)
        if args.verb == "scp":
            return scp(root, args)
        return ssh(root, args)
    except ValueError as error:
        return fail(str(error))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
