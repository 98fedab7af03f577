"""harness-preflight on simulated pods (launch.local, real jax.distributed over gloo): a
healthy 2x4 pod passes every check and writes a report that validates against its
schema; each injected fault gives a FAIL naming exactly the faulty host; afterwards no
process is left.

    .venv/bin/python -m pytest -q tests/test_preflight.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from harness.preflight.cli import main
from harness.preflight.schema import PREFLIGHT_SCHEMA
from harness.preflight.storage import SCRATCH
from tests.support.runs import compile_cache_flags, failure_report, harness_env, host_lines, launch_local, pid_alive

POD_TIMEOUT_S = 180
ROWS = ["rendezvous", "consistency", "devices", "host speed", "interconnect", "storage", "storage throughput",
        "checkpoint round trip", "dry run"]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compilation cache for this module's pods: the same step compiles once."""
    return tmp_path_factory.mktemp("preflight-compile-cache")


def preflight_command(tmp_path: Path, cache: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "harness.preflight", "--config", "local-2x4", "--run_dir", str(tmp_path / "run"),
            "--checkpoint_dir", str(tmp_path / "ckpt"), *compile_cache_flags(cache), *args]


def run_pod(tmp_path: Path, num_processes: int, devices: int, command: list[str]
            ) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    result = launch_local(num_processes, devices, command, timeout=POD_TIMEOUT_S, env=harness_env())
    assert result.returncode != 124, failure_report(result)  # the launcher's own timeout: something hung
    path = tmp_path / "run" / "preflight.json"
    return result, json.loads(path.read_text()) if path.exists() else None


def processes_mentioning(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (a test's own tmp dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if marker in text and pid != os.getpid() and pid_alive(pid):
            found.append(pid)
    return found


def cells(report: dict) -> dict[tuple[str, int], dict]:
    return {(check["check"], cell["host"]): cell for check in report["checks"] for cell in check["cells"]}


@pytest.mark.alone  # host speed compares the two hosts: a test beside it would slow one of them
def test_a_healthy_2x4_pod_passes_every_check(tmp_path: Path, compile_cache: Path) -> None:
    command = preflight_command(tmp_path, compile_cache, "--interconnect_sizes", "16384,131072,524288",
                                "--interconnect_repeats", "2")
    result, report = run_pod(tmp_path, 2, 4, command)
    assert result.returncode == 0, failure_report(result)
    assert report is not None, failure_report(result)
    jsonschema.validate(report, PREFLIGHT_SCHEMA)
    assert report["verdict"] == "PASS" and report["exit_code"] == 0 and report["failures"] == []
    assert {(c["check"], c["status"]) for c in report["checks"]} == {(row, "PASS") for row in ROWS}
    assert [h["host"] for h in report["hosts"]] == [0, 1]
    assert report["pod"] == {"num_processes": 2, "coordinator_address": report["pod"]["coordinator_address"],
                             "mesh": {"data": 2, "fsdp": 4}, "platform": "cpu", "device_kind": "cpu"}
    facts = report["consistency"]["hosts"]
    assert facts["0"] == facts["1"] == report["consistency"]["pod"]
    assert len(report["consistency"]["pod"]["train step"]) == 16
    measured = {(m["collective"], m["axis"], m["bytes"]) for m in report["interconnect"]["measurements"]}
    assert len(measured) == 4 * 2 * 3  # four collectives, two axes, three sizes
    assert all(set(m["latency_s"]) == {"0", "1"} for m in report["interconnect"]["measurements"])
    table = cells(report)
    assert table[("devices", 1)]["metrics"]["devices"] == 4
    assert table[("dry run", 0)]["metrics"]["resumed_at"] == 4
    assert table[("storage", 1)]["metrics"]["write_ms"] >= 0
    assert table[("host speed", 1)]["metrics"]["host_units"] > 0
    assert table[("dry run", 1)]["metrics"]["host_steps"] >= 1
    shard = table[("storage throughput", 1)]["metrics"]["bytes"]
    assert report["storage_throughput"]["hosts"] == 2 and report["storage_throughput"]["bytes"] == 2 * shard
    page = (tmp_path / "run" / "preflight.md").read_text()
    assert page.startswith("# Preflight: PASS") and "## Interconnect" in page and "## Storage throughput" in page
    printed = host_lines(result.stdout, 0)
    assert any(line.startswith("consistency ") and line.count("PASS") == 2 for line in printed)
    checks = [line for line in printed if line.startswith("harness-preflight: check ")]  # as each one finished
    assert [re.sub(r" \(slowest \d+\.\d\d s\)$", "", line) for line in checks] == [
        f"harness-preflight: check {row}: PASS on 2 host(s)" for row in ROWS]
    assert printed.index(checks[-1]) < printed.index("harness-preflight: PASS: 2 host(s), every check passed")
    assert "harness-preflight: PASS: 2 host(s), every check passed" in printed
    assert not (tmp_path / "ckpt" / SCRATCH).exists()
    assert processes_mentioning(str(tmp_path)) == []


# kind, processes, devices each, faulty host, the row that must FAIL, extra flags (checks shortened
# to what catches the fault; the healthy pod above runs them all).
FAULTS = [
    ("jax_version", 2, 4, 1, "consistency", ["--checks", "consistency"]),
    ("code_hash", 3, 2, 0, "consistency", ["--checks", "consistency"]),
    ("wrong_device_result", 2, 4, 1, "devices", ["--checks", "consistency,devices"]),
    ("never_start", 2, 4, 1, "rendezvous", ["--checks", "consistency", "--initialization_timeout", "5"]),
    ("unwritable_checkpoint_dir", 2, 4, 1, "storage", ["--checks", "consistency,storage,dry_run"]),
]
EVIDENCE = {"jax_version": "+testing-fault", "code_hash": "code: ", "wrong_device_result": "1/65536 wrong",
            "never_start": "never reached the coordinator",
            "unwritable_checkpoint_dir": "not-a-directory-host1"}


@pytest.mark.parametrize("kind, processes, devices, host, row, flags", FAULTS, ids=[f[0] for f in FAULTS])
def test_an_injected_fault_fails_naming_exactly_that_host(tmp_path: Path, compile_cache: Path, kind: str,
                                                          processes: int, devices: int, host: int, row: str,
                                                          flags: list[str]) -> None:
    command = preflight_command(tmp_path, compile_cache, "--cpu_devices", str(devices), "--fsdp_devices",
                                str(devices), "--batch_size", "24", "--testing_fault", kind,
                                "--testing_fault_host", str(host), *flags)
    result, report = run_pod(tmp_path, processes, devices, command)
    assert result.returncode == 1, failure_report(result)
    assert report is not None, failure_report(result)
    jsonschema.validate(report, PREFLIGHT_SCHEMA)
    assert report["verdict"] == "FAIL" and report["testing_fault"] == {"kind": kind, "host": host}
    assert [(f["check"], f["host"]) for f in report["failures"]] == [(row, host)], report["failures"]
    assert EVIDENCE[kind] in report["failures"][0]["detail"]
    others = {key: cell["status"] for key, cell in cells(report).items() if key[1] != host}
    assert set(others.values()) <= {"PASS", "SKIP"}, others
    assert f"harness-preflight: FAIL: host {host}: {row}: " in result.stdout
    if kind != "never_start":  # the pod assembled: process 0 said so as the check finished
        assert f"[host 0] harness-preflight: check {row}: FAIL on host {host} of {processes}: " in result.stdout
    if kind == "never_start":  # the launcher names it too, from process 0's line
        assert f"launch.local: host {host} stopped responding (named by host 0)" in result.stderr, failure_report(result)
    assert processes_mentioning(str(tmp_path)) == []


def test_a_coordinator_that_never_starts_is_named_by_the_others(tmp_path: Path, compile_cache: Path) -> None:
    """Process 0 writes the report files; without it each host prints its own view."""
    command = preflight_command(tmp_path, compile_cache, "--testing_fault", "never_start", "--testing_fault_host",
                                "0", "--checks", "consistency", "--initialization_timeout", "5")
    result, report = run_pod(tmp_path, 2, 4, command)
    assert result.returncode == 1, failure_report(result)
    assert report is None
    printed = host_lines(result.stdout, 1)
    assert "harness-preflight: FAIL: host 0: rendezvous: unreachable from host 1" in printed, failure_report(result)
    assert "launch.local: host 0 stopped responding (named by host 1)" in result.stderr, failure_report(result)
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.parametrize("argv, message", [
    (["--testing_fault", "meteor", "--testing_fault_host", "1"], "invalid choice"),
    (["--testing_fault", "jax_version"], "needs --testing_fault_host"),
    (["--testing_fault_host", "1"], "needs --testing_fault"),
    (["--checks", "devices,telepathy"], "--checks takes"),
    (["--interconnect_sizes", "2"], "--interconnect_sizes takes"),
    (["--straggler_factor", "1"], "--straggler_factor must be above 1"),
    (["--slow_host_factor", "0.9"], "--slow_host_factor must be above 1"),
    (["--throughput_max_bytes", "0"], "--throughput_max_bytes must be positive"),
    (["--config", "no-such-preset"], "unknown preset"),
])
def test_bad_flags_are_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness-preflight: error: ") and message in err[0], err


@pytest.mark.soak
@pytest.mark.parametrize("kind, processes, devices, host, row, flags", FAULTS, ids=[f[0] for f in FAULTS])
def test_soak_an_injected_fault_with_every_check(tmp_path: Path, compile_cache: Path, kind: str, processes: int,
                                                 devices: int, host: int, row: str, flags: list[str]) -> None:
    """The same faults with every check and the default sweep: still exactly one host named."""
    timeout = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--initialization_timeout"]
    command = preflight_command(tmp_path, compile_cache, "--cpu_devices", str(devices), "--fsdp_devices",
                                str(devices), "--batch_size", "24", "--testing_fault", kind,
                                "--testing_fault_host", str(host),
                                *(["--initialization_timeout", timeout[0]] if timeout else []))
    result, report = run_pod(tmp_path, processes, devices, command)
    assert result.returncode == 1, failure_report(result)
    jsonschema.validate(report, PREFLIGHT_SCHEMA)
    assert {f["host"] for f in report["failures"]} == {host}, report["failures"]
    assert row in {f["check"] for f in report["failures"]}
    assert processes_mentioning(str(tmp_path)) == []
