"""Simulate a pod on this machine: N processes, each a "host" with M fake CPU devices.

    python -m launch.local --num_processes 2 --devices_per_process 4 -- \\
        python -m harness.train --config smoke

Each child gets HARNESS_COORDINATOR_ADDRESS / HARNESS_NUM_PROCESSES / HARNESS_PROCESS_ID
(read by harness/runtime/distributed.py), HARNESS_RUN_ID (one new id per launch, by which
preflight's roll call tells a host of another launch apart), an XLA device-count flag, and
JAX_PLATFORMS=cpu unless the environment sets JAX_PLATFORMS (`JAX_PLATFORMS=""` lets JAX load libtpu, as on
a TPU VM, before it settles on the CPU). Its output lines come back prefixed `[host i] `.
The first host to fail stops the others, because survivors of a dead peer hang in their
next collective until a heartbeat timeout aborts them. The failure report names the host
that failed, or, when that host is a survivor whose watchdog named a silent peer
(exit 42 and the lost-hosts line), the peer:

    launch.local: host 1 stopped responding (named by host 0); host 0 failed (exit code 42)

and such a peer gets SIGKILL at once (a frozen process does not act on SIGTERM).
SIGTERM/SIGINT to the launcher is forwarded as SIGTERM to every host, which is how
preemption is simulated.

Exit status: 0 if every host exits 0 (also after a forwarded SIGTERM); otherwise the
status of the first host to fail (its exit code, or 128+N if killed by signal N); 124
when --timeout fires; 127 if the command cannot be started; 2 for usage errors.
"""

import argparse
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from launch.failures import PodResult
from launch.run_id import new_run_id
from launch.supervisor import Supervisor, stop_on_signals

PROGRAM = "launch.local"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
EXIT_CANNOT_START = 127


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_device_count(xla_flags: str, device_count: int) -> str:
    """XLA_FLAGS with the fake CPU device count set, keeping every other flag."""
    kept = [flag for flag in xla_flags.split() if not flag.startswith(DEVICE_COUNT_FLAG)]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={device_count}"])


def host_environment(
    base: Mapping[str, str],
    *,
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    devices_per_process: int,
    run_id: str,
) -> dict[str, str]:
    """The environment of one simulated host: the base plus what makes it part of the pod."""
    env = dict(base)
    env.update(
        HARNESS_COORDINATOR_ADDRESS=coordinator_address,
        HARNESS_NUM_PROCESSES=str(num_processes),
        HARNESS_PROCESS_ID=str(process_id),
        HARNESS_RUN_ID=run_id,
        JAX_PLATFORMS=base.get("JAX_PLATFORMS", "cpu"),
        XLA_FLAGS=with_device_count(base.get("XLA_FLAGS", ""), devices_per_process),
        PYTHONUNBUFFERED="1",
    )
    return env


def run_local_pod(
    command: Sequence[str],
    num_processes: int,
    devices_per_process: int,
    *,
    timeout: float | None = None,
    kill_grace: float = 5.0,
    stop_event: threading.Event | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> PodResult:
    """Run `command` as `num_processes` hosts of a simulated pod and wait for them.

    Setting `stop_event` has the effect of a SIGTERM to the CLI launcher. Output goes to
    `stdout`/`stderr` (default: this process's, looked up at call time so pytest's
    capture works). Raises OSError if the command cannot be started; hosts already
    started are killed first.
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError("num_processes and devices_per_process must be at least 1")
    base = os.environ if env is None else env
    coordinator_address = f"127.0.0.1:{free_port()}"
    run_id = new_run_id("local-")
    with Supervisor(PROGRAM, stdout or sys.stdout, stderr or sys.stderr) as supervisor:
        for process_id in range(num_processes):
            host_env = host_environment(
                base,
                coordinator_address=coordinator_address,
                num_processes=num_processes,
                process_id=process_id,
                devices_per_process=devices_per_process,
                run_id=run_id,
            )
            supervisor.start(f"host {process_id}", command, env=host_env, cwd=cwd)
        return supervisor.wait(timeout=timeout, kill_grace=kill_grace, stop_event=stop_event)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split `FLAGS -- COMMAND...` and parse the flags."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROGRAM}",
        usage="%(prog)s --num_processes N --devices_per_process M [options] -- COMMAND [ARGS...]",
        description="Run COMMAND as N hosts of a pod simulated on 127.0.0.1.",
    )
    parser.add_argument("--num_processes", type=int, required=True, help="hosts to simulate")
    parser.add_argument(
        "--devices_per_process", type=int, required=True, help="fake CPU devices per host"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds before everything is killed (default: none)"
    )
    parser.add_argument(
        "--kill_grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL (default: 5)"
    )
    argv = list(argv)
    if "--" not in argv:
        parser.error("missing '--' before the command to run")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        parser.error("no command after '--'")
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be at least 1")
    return args, command


def main(argv: Sequence[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    stop_event = threading.Event()
    with stop_on_signals(stop_event):
        try:
            result = run_local_pod(
                command,
                args.num_processes,
                args.devices_per_process,
                timeout=args.timeout,
                kill_grace=args.kill_grace,
                stop_event=stop_event,
            )
        except OSError as error:
            print(f"{PROGRAM}: cannot start {command[0]!r}: {error}", file=sys.stderr)
            return EXIT_CANNOT_START
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
