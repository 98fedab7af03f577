"""Start-up verdicts are agreed: a check that fails on one host of a pod (here a run dir
that is a file on host 1 only, as with per-host local directories) makes every host exit
2 with the same line, at once, and nothing is written on any host.

    .venv/bin/python -m pytest -q tests/test_startup_agreement.py
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.runtime import distributed
from launch.local import free_port
from tests.support.argv import train_args
from tests.support.runs import compile_cache_flags, harness_env, start_harness, tree_snapshot, wait_until

START_TIMEOUT_S = 120
# Once one host has exited, the other must follow within this (it would otherwise sit in
# the first collective until JAX's heartbeat timeout, 60 s by default).
FOLLOW_TIMEOUT_S = 10


def test_a_startup_error_on_one_host_stops_every_host_with_the_same_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("host 1's run dir is a file\n")
    address = f"127.0.0.1:{free_port()}"
    processes = []
    for host in range(2):
        run_dir = not_a_dir if host == 1 else tmp_path / "host0" / "run"
        env = harness_env(**{distributed.ENV_ADDRESS: address, distributed.ENV_NUM_PROCESSES: "2",
                             distributed.ENV_PROCESS_ID: str(host)})
        args = train_args(None, compile_cache_flags(tmp_path / "cache"), preset="local-2x4", run_dir=run_dir,
                          checkpoint_dir=str(tmp_path / f"host{host}" / "ckpt"))
        processes.append(start_harness(args, log_path=tmp_path / f"host{host}.log", env=env))
    before = tree_snapshot(tmp_path / "host0")
    try:
        wait_until(lambda: any(p.poll() is not None for p in processes), "a host finishing its start-up checks",
                   timeout=START_TIMEOUT_S, poll_s=0.1)
        for process in processes:
            process.wait(timeout=FOLLOW_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError("one host exited, the other did not follow within "
                             f"{FOLLOW_TIMEOUT_S} s:\n" + _logs(tmp_path)) from None
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    expected = (f"harness-train: error: host 1: run dir {not_a_dir}: {not_a_dir} is not a directory")
    for host, process in enumerate(processes):
        log = (tmp_path / f"host{host}.log").read_text()
        assert process.returncode == 2, _logs(tmp_path)
        # gloo's C++ logging can land mid-line, so the line is found where it starts.
        harness_lines = [line[line.index("harness-train:"):] for line in log.splitlines() if "harness-train:" in line]
        assert harness_lines == [expected], _logs(tmp_path)
        assert "Traceback" not in log, _logs(tmp_path)
    assert tree_snapshot(tmp_path / "host0") == before == {}
    assert not_a_dir.read_text() == "host 1's run dir is a file\n"


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- host {h} ---\n{(tmp_path / f'host{h}.log').read_text()}" for h in range(2))
