"""Tests for launch.local: the simulated pod's environment, output relay and failure handling.

The children are small Python programs, not jax: what is tested is the supervision.
No test measures time: each shows what the launcher did (its lines, its exit status,
which processes got which signal), and every subprocess has a generous timeout.
"""

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.runtime.watchdog import EXIT_HOST_LOST, lost_hosts_line
from launch.local import run_local_pod, with_device_count
from tests.support.runs import REPO_ROOT, pid_alive, wait_until

LAUNCH_TIMEOUT_S = 120  # a hang guard: every launch here ends in about a second


def launch_argv(flags: str, command: list[str]) -> list[str]:
    """`python -m launch.local FLAGS -- COMMAND`."""
    return [sys.executable, "-m", "launch.local", *shlex.split(flags), "--", *command]


def launch(flags: str, command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        launch_argv(flags, command), cwd=REPO_ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )


def python_child(source: str) -> list[str]:
    """A child command: python running `source`."""
    return [sys.executable, "-c", textwrap.dedent(source)]


def read_pids(directory: Path) -> list[int]:
    return [int(path.read_text()) for path in sorted(directory.glob("*.pid"))]


@pytest.fixture
def reap_pids(tmp_path: Path):
    """Kill any child whose pid file is left in tmp_path, so a failing test leaks nothing."""
    yield tmp_path
    for pid in read_pids(tmp_path):
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_with_device_count_replaces_only_the_device_flag() -> None:
    flags = "--xla_foo=1 --xla_force_host_platform_device_count=8 --xla_bar"
    assert (
        with_device_count(flags, 2) == "--xla_foo=1 --xla_bar --xla_force_host_platform_device_count=2"
    )
    assert with_device_count("", 4) == "--xla_force_host_platform_device_count=4"


def test_each_host_gets_its_id_and_the_shared_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_keep_me=1 --xla_force_host_platform_device_count=8")
    child = python_child(
        """
        import json, os
        names = ["HARNESS_COORDINATOR_ADDRESS", "HARNESS_NUM_PROCESSES", "HARNESS_PROCESS_ID",
                 "JAX_PLATFORMS", "XLA_FLAGS", "PYTHONUNBUFFERED"]
        print(json.dumps({name: os.environ.get(name) for name in names}))
        """
    )
    result = launch("--num_processes 3 --devices_per_process 4", child)
    assert result.returncode == 0, result.stderr
    envs = {}
    for line in result.stdout.splitlines():
        prefix, _, payload = line.partition("] ")
        envs[prefix] = json.loads(payload)
    assert sorted(envs) == ["[host 0", "[host 1", "[host 2"]
    assert [envs[f"[host {i}"]["HARNESS_PROCESS_ID"] for i in range(3)] == ["0", "1", "2"]
    addresses = {env["HARNESS_COORDINATOR_ADDRESS"] for env in envs.values()}
    assert len(addresses) == 1
    host, port = addresses.pop().split(":")
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    for env in envs.values():
        assert env["HARNESS_NUM_PROCESSES"] == "3"
        assert env["JAX_PLATFORMS"] == "cpu"
        assert env["XLA_FLAGS"] == "--xla_keep_me=1 --xla_force_host_platform_device_count=4"
        assert env["PYTHONUNBUFFERED"] == "1"


def test_every_line_is_prefixed_on_its_own_stream_including_a_final_partial_line() -> None:
    child = python_child(
        """
        import os, sys
        i = os.environ["HARNESS_PROCESS_ID"]
        sys.stderr.write(f"err {i}\\n")
        sys.stdout.write(f"one {i}\\ntwo {i}")
        """
    )
    result = launch("--num_processes 2 --devices_per_process 1", child)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        "[host 0] one 0",
        "[host 0] two 0",
        "[host 1] one 1",
        "[host 1] two 1",
    ]
    assert sorted(result.stderr.splitlines()) == ["[host 0] err 0", "[host 1] err 1"]


def test_a_failing_host_makes_the_launcher_stop_the_others(reap_pids: Path) -> None:
    """The others run until stopped; they say when SIGTERM arrives, so the output shows
    it was the launcher's stop, sent because host 1 failed."""
    child = python_child(
        f"""
        import os, signal, sys, time
        i = os.environ["HARNESS_PROCESS_ID"]
        def stopped(signum, frame):
            print(f"host {{i}} got SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stopped)
        open(os.path.join({str(reap_pids)!r}, i + ".pid"), "w").write(str(os.getpid()))
        if i == "1":
            while len(os.listdir({str(reap_pids)!r})) < 3:
                time.sleep(0.02)
            sys.exit(3)
        time.sleep(600)
        """
    )
    result = launch("--num_processes 3 --devices_per_process 1 --kill_grace 60", child)
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == ["launch.local: host 1 failed (exit code 3)"]
    assert sorted(result.stdout.splitlines()) == ["[host 0] host 0 got SIGTERM", "[host 2] host 2 got SIGTERM"]
    assert not [pid for pid in read_pids(reap_pids) if pid_alive(pid)]


def test_the_host_a_survivor_names_is_reported_and_killed_at_once(reap_pids: Path) -> None:
    """Host 0 plays a survivor whose watchdog named host 1 (the real line, exit 42); host
    1 plays a frozen host, deaf to SIGTERM. The launcher names host 1, not host 0, and
    SIGKILLs it without waiting out the grace (600 s, past this test's timeout)."""
    report = lost_hosts_line(0, [1], "no heartbeat for 6 s")
    child = python_child(
        f"""
        import os, signal, sys, time
        i = os.environ["HARNESS_PROCESS_ID"]
        directory = {str(reap_pids)!r}
        if i == "1":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open(os.path.join(directory, "1.pid"), "w").write(str(os.getpid()))
            time.sleep(900)
        while not os.path.exists(os.path.join(directory, "1.pid")):
            time.sleep(0.02)
        print({report!r}, file=sys.stderr, flush=True)
        os._exit({EXIT_HOST_LOST})
        """
    )
    result = launch("--num_processes 2 --devices_per_process 1 --kill_grace 600", child)
    assert result.returncode == EXIT_HOST_LOST, result.stderr
    assert result.stderr.splitlines() == [
        f"[host 0] {report}",
        f"launch.local: host 1 stopped responding (named by host 0); host 0 failed (exit code {EXIT_HOST_LOST})",
    ]
    assert not [pid for pid in read_pids(reap_pids) if pid_alive(pid)]


def test_named_hosts_are_in_the_result_of_the_in_process_api(reap_pids: Path) -> None:
    report = lost_hosts_line(2, [0, 1], "no heartbeat for 6 s")
    child = python_child(
        f"""
        import os, sys, time
        i = os.environ["HARNESS_PROCESS_ID"]
        open(os.path.join({str(reap_pids)!r}, i + ".pid"), "w").write(str(os.getpid()))
        if i != "2":
            time.sleep(900)
        while len(os.listdir({str(reap_pids)!r})) < 3:
            time.sleep(0.02)
        print({report!r}, file=sys.stderr, flush=True)
        sys.exit({EXIT_HOST_LOST})
        """
    )
    stderr = io.StringIO()
    result = run_local_pod(child, 3, 1, kill_grace=600, timeout=LAUNCH_TIMEOUT_S, stderr=stderr)
    assert result.returncodes == (-signal.SIGKILL, -signal.SIGKILL, EXIT_HOST_LOST)
    assert result.first_failure == 2 and result.unresponsive == (0, 1)
    assert stderr.getvalue().splitlines()[-1] == (
        f"launch.local: host 0, host 1 stopped responding (named by host 2); host 2 failed (exit code {EXIT_HOST_LOST})")


def test_a_host_killed_by_a_signal_is_reported_as_such() -> None:
    child = python_child(
        """
        import os, signal, time
        if os.environ["HARNESS_PROCESS_ID"] == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)
        """
    )
    result = launch("--num_processes 2 --devices_per_process 1 --kill_grace 2", child)
    assert result.returncode == 128 + signal.SIGKILL
    assert "launch.local: host 0 failed (killed by SIGKILL)" in result.stderr


def test_sigterm_is_forwarded_and_hosts_that_exit_cleanly_mean_success(tmp_path: Path) -> None:
    child = python_child(
        f"""
        import os, signal, sys, time
        i = os.environ["HARNESS_PROCESS_ID"]
        def save_and_exit(signum, frame):
            print(f"host {{i}} saved on SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, save_and_exit)
        open(os.path.join({str(tmp_path)!r}, i + ".ready"), "w").close()
        time.sleep(600)
        """
    )
    launcher = subprocess.Popen(
        launch_argv("--num_processes 2 --devices_per_process 1", child),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = [tmp_path / "0.ready", tmp_path / "1.ready"]
        wait_until(lambda: all(path.exists() for path in ready), f"{ready}", timeout=10)
        launcher.send_signal(signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        launcher.kill()
        launcher.wait(timeout=LAUNCH_TIMEOUT_S)
    assert launcher.returncode == 0, stderr
    assert "[host 0] host 0 saved on SIGTERM" in stdout
    assert "[host 1] host 1 saved on SIGTERM" in stdout


def test_a_host_ignoring_sigterm_is_killed_after_the_grace_period(reap_pids: Path) -> None:
    """In-process API: host 0 fails once host 1 ignores SIGTERM; host 1 must get SIGKILL."""
    child = python_child(
        f"""
        import os, signal, sys, time
        directory = {str(reap_pids)!r}
        if os.environ["HARNESS_PROCESS_ID"] == "1":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open(os.path.join(directory, "1.pid"), "w").write(str(os.getpid()))
            time.sleep(600)
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(directory, "1.pid")) and time.monotonic() < deadline:
            time.sleep(0.02)
        sys.exit(4)
        """
    )
    stderr = io.StringIO()
    result = run_local_pod(child, 2, 1, kill_grace=1.0, timeout=LAUNCH_TIMEOUT_S, stderr=stderr)
    assert result.returncodes == (4, -signal.SIGKILL)
    assert result.first_failure == 0 and result.exit_status == 4
    assert stderr.getvalue().splitlines() == [
        "launch.local: host 0 failed (exit code 4)",
        "launch.local: host 1 still running after 1s; sending SIGKILL",
    ]
    assert not [pid for pid in read_pids(reap_pids) if pid_alive(pid)]


def test_timeout_kills_everything_and_names_the_hosts_still_running() -> None:
    child = python_child(
        """
        import os, time
        if os.environ["HARNESS_PROCESS_ID"] != "0":
            time.sleep(600)
        """
    )
    result = launch("--num_processes 3 --devices_per_process 1 --timeout 2 --kill_grace 1", child)
    assert result.returncode == 124
    assert "launch.local: timed out after 2s; still running: host 1, host 2" in result.stderr


def test_a_missing_command_is_a_clear_error() -> None:
    result = launch("--num_processes 2 --devices_per_process 1", ["/nonexistent/command"])
    assert result.returncode == 127
    assert "cannot start '/nonexistent/command'" in result.stderr
