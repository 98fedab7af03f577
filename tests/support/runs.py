"""Run the real CLI in subprocesses, always with a timeout."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tests.support.argv import train_args, train_command

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 240


def harness_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus device-count flags (the preset decides)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("WANDB_MODE", "disabled")
    env.update(extra)
    return env


def compile_cache_flags(cache_dir: Path) -> list[str]:
    """`--compilation_cache_dir` for a test's runs: runs of the same config then compile
    their init and step once, not once per process, and a test never shares the cache
    in /tmp that the presets name with runs outside it."""
    return ["--compilation_cache_dir", str(cache_dir)]


def run_harness(args: list[str], *, timeout: float = DEFAULT_TIMEOUT_S, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """`python -m harness.train ARGS`, captured; raises on timeout (never hangs)."""
    return subprocess.run(
        train_command(args),
        cwd=REPO_ROOT, env=env or harness_env(), capture_output=True, text=True, timeout=timeout,
    )


def start_harness(args: list[str], *, log_path: Path, env: dict[str, str] | None = None,
                  ) -> subprocess.Popen[bytes]:
    """`python -m harness.train ARGS` in the background, stdout+stderr to `log_path`.

    The caller must wait on it with a timeout (or kill it); a file, not a pipe, so a
    chatty run can never block on a full pipe buffer.
    """
    with log_path.open("wb") as log:
        return subprocess.Popen(
            train_command(args),
            cwd=REPO_ROOT, env=env or harness_env(), stdout=log, stderr=subprocess.STDOUT,
        )


def sigkill_when(process: subprocess.Popen, ready: Callable[[], bool], *, log_path: Path, timeout: float,
                 poll_s: float = 0.01) -> None:
    """SIGKILLs `process` as soon as `ready()` holds (polled every `poll_s`); fails if the
    process ends first or `ready` never holds within `timeout`. The process is gone after."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None:
                raise AssertionError(f"run ended (rc {process.returncode}) before the kill:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready for the kill within {timeout} s:\n{log_path.read_text()}")
            time.sleep(poll_s)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def launch_local(num_processes: int, devices_per_process: int, command: list[str], *, timeout: float,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m launch.local ... -- COMMAND`, captured. The launcher gets `--timeout`
    `timeout` (it then kills every host and exits 124); this call waits 30 s longer and
    raises if even the launcher hangs."""
    return subprocess.run(
        [sys.executable, "-m", "launch.local", "--num_processes", str(num_processes),
         "--devices_per_process", str(devices_per_process), "--timeout", str(timeout), "--", *command],
        cwd=REPO_ROOT, env=env or harness_env(), capture_output=True, text=True, timeout=timeout + 30,
    )


def host_lines(output: str, host: int) -> list[str]:
    """The lines host `host` printed under the launcher, without the `[host i] ` prefix."""
    prefix = f"[host {host}] "
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]


def failure_report(result: subprocess.CompletedProcess[str], tail: int = 4000) -> str:
    """Exit status and the ends of both streams, for an assertion message."""
    return (f"exit {result.returncode}\n--- stdout (tail) ---\n{result.stdout[-tail:]}\n"
            f"--- stderr (tail) ---\n{result.stderr[-tail:]}")


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (itself included) -> sha256 of its bytes, or 'dir'.

    Equal snapshots before and after a command mean it changed nothing there; a missing
    root gives {}.
    """
    import hashlib

    if not root.exists():
        return {}
    paths = [root, *sorted(root.rglob("*"))]
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in paths
    }


def copy_run(source: Path, target: Path) -> Path:
    """A copy of the run in `source` (its ckpt/ and run/, as tests/support/argv.py lays
    them out) at `target`, for a test that changes one without touching the original."""
    for part in ("ckpt", "run"):
        shutil.copytree(source / part, target / part)
    return target


# --- Background runs: a local pod, its hosts, their output (tests of preemption, host loss).

def start_local_pod(num_processes: int, devices_per_process: int, command: list[str], *, log_path: Path,
                    timeout: float, kill_grace: float = 5.0, env: dict[str, str] | None = None,
                    ) -> subprocess.Popen[bytes]:
    """`python -m launch.local ... -- COMMAND` in the background; its stdout and stderr
    (host lines prefixed `[host i] `, its own lines `launch.local: `) go to `log_path`.

    The launcher kills every host after `timeout` s; still, wait on it with a timeout and
    call `stop_local_pod` in a `finally`.
    """
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "launch.local", "--num_processes", str(num_processes),
             "--devices_per_process", str(devices_per_process), "--timeout", str(timeout),
             "--kill_grace", str(kill_grace), "--", *command],
            cwd=REPO_ROOT, env=env or harness_env(), stdout=log, stderr=subprocess.STDOUT,
        )


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), which tells a pid's reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def pid_alive(pid: int) -> bool:
    """Exists and is not a zombie waiting to be reaped."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class Host:
    """One host process of a local pod, as found while it ran."""

    pid: int
    start_time: str

    def same_process(self) -> bool:
        return pid_alive(self.pid) and _start_time(self.pid) == self.start_time


def local_pod_hosts(launcher_pid: int) -> dict[int, Host]:
    """HARNESS_PROCESS_ID -> each host the launcher started (its direct children)."""
    hosts = {}
    for children in Path(f"/proc/{launcher_pid}/task").glob("*/children"):
        try:
            pids = [int(pid) for pid in children.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            start = _start_time(pid)
            for variable in environ:
                if variable.startswith(b"HARNESS_PROCESS_ID=") and start is not None:
                    hosts[int(variable.split(b"=", 1)[1])] = Host(pid, start)
    return hosts


def stop_local_pod(launcher: subprocess.Popen, hosts: dict[int, Host]) -> None:
    """SIGKILL whatever is left of a pod: each host's process group (a host leads its own
    session), then the launcher. Bounded; for `finally` blocks."""
    for host in hosts.values():
        if host.same_process():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(host.pid, signal.SIGKILL)
    if launcher.poll() is None:
        launcher.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        launcher.wait(timeout=30)


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float,
               process: subprocess.Popen | None = None, poll_s: float = 0.05) -> None:
    """Polls `condition` until it holds; AssertionError naming `what` after `timeout` s, or
    at once if `process` (when given) has ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, (
            f"process ended (rc {process.returncode}) while waiting for {what}")
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(poll_s)


def wait_for_output(log_path: Path, pattern: str, process: subprocess.Popen, *, timeout: float) -> re.Match:
    """The first match of the regex `pattern` (MULTILINE) in `log_path`, polled until it
    appears; AssertionError if `process` ends first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern, re.MULTILINE)
    while True:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        match = regex.search(text)
        if match:
            return match
        assert process.poll() is None, (
            f"process ended (rc {process.returncode}) before {pattern!r}:\n{text[-3000:]}")
        assert time.monotonic() < deadline, f"no {pattern!r} within {timeout:g}s:\n{text[-3000:]}"
        time.sleep(0.05)


def processes_in_groups(groups: set[int]) -> list[int]:
    """Live (not zombie) processes whose process group is one of `groups`: what is left of
    a pod whose hosts each led their own group."""
    found = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) in groups and state != "Z":
            found.append(int(stat_path.parent.name))
    return found


# --- Reference runs for exact-resume tests.

REFERENCE_TOPOLOGIES = {"1x8": (1, 8, "smoke"), "2x4": (2, 4, "local-2x4")}
REFERENCE_MIN_STEPS = 32  # one run long enough for most requests: a step costs ~20 ms
_REFERENCE_ROWS: dict[str, list[dict]] = {}


def uninterrupted_rows(topology: str, num_steps: int, *, workdir: Path, env: dict[str, str] | None = None,
                       extra_args: tuple[str, ...] = (), timeout: float = DEFAULT_TIMEOUT_S) -> list[dict]:
    """`metrics.jsonl` rows of steps 0..num_steps-1 of an uninterrupted run that logs every
    step, on `topology` ("1x8": the smoke preset in one process; "2x4": local-2x4 under
    launch.local): the oracle a resumed run must equal bit for bit.

    Made once per pytest process and topology, and shared by every module that asks: a
    step's metrics do not depend on --num_train_steps (the learning rate warms up, then
    stays constant; a batch is a function of its step), so a longer run serves a shorter
    request, and the first run makes at least REFERENCE_MIN_STEPS. `workdir` (empty)
    receives the run when one is needed; `extra_args` are flags that leave the metrics
    alone (a compilation cache).
    """
    from harness.outputs.sinks import read_metrics

    rows = _REFERENCE_ROWS.get(topology, [])
    if len(rows) < num_steps:
        num_processes, devices, preset = REFERENCE_TOPOLOGIES[topology]
        run_steps = max(num_steps, REFERENCE_MIN_STEPS)
        args = train_args(workdir, (), *extra_args, preset=preset, num_train_steps=run_steps, log_interval=1,
                          save_interval=run_steps, no_hard_examples=True)
        if num_processes == 1:
            result = run_harness(args, timeout=timeout, env=env)
        else:
            result = launch_local(num_processes, devices, train_command(args), timeout=timeout, env=env)
        assert result.returncode == 0, failure_report(result)
        rows = read_metrics(workdir / "run" / "metrics.jsonl")
        assert [row["step"] for row in rows] == list(range(run_steps)), failure_report(result)
        _REFERENCE_ROWS[topology] = rows
    return rows[:num_steps]
