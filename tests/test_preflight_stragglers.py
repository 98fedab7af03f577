"""Slow hosts and slow storage, made from outside the way a pod makes them: preflight
names a host frozen in SIGSTOP/SIGCONT bursts (tests/support/slow_host.py) and a host
whose gs:// objects the fault proxy delays. The rule that calls a host slow, the judged
cells and the throughput transfer itself run in this process against oracles.

    .venv/bin/python -m pytest -q tests/test_preflight_stragglers.py
    .venv/bin/python -m pytest -q -m soak -s tests/test_preflight_stragglers.py  # the 10-run rates
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest

from harness.preflight import dry_run, storage, stragglers
from harness.preflight.results import DRY_RUN, FAIL, HOST_SPEED, PASS, THROUGHPUT, HostReport, Observation
from harness.preflight.schema import PREFLIGHT_SCHEMA
from harness.preflight.stragglers import Outlier, outliers
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.runs import (compile_cache_flags, failure_report, harness_env, launch_local, start_local_pod,
                                stop_local_pod, local_pod_hosts)
from tests.support.slow_host import braking

pytest_plugins = ["tests.support.gcs_emulator"]  # the session's `gcs_emulator` fixture

POD_TIMEOUT_S = 240
SOAK_RUNS = 10


# --- The rule (stragglers.outliers) against hand-made numbers.

def test_a_pod_of_equal_hosts_has_no_outlier() -> None:
    assert outliers({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, 1.3) == {}
    assert outliers({0: 1.0, 1: 1.04, 2: 0.97}, 1.01) == {}  # within the 5% floor on the spread


def test_one_slow_host_of_three_is_named_with_its_factor() -> None:
    found = outliers({0: 10.0, 1: 11.0, 2: 24.0}, 1.3)
    assert found == {2: Outlier(24.0, 11.0, "the median")} and found[2].ratio == pytest.approx(24 / 11)


def test_a_host_below_the_factor_or_inside_the_spread_is_not_named() -> None:
    assert outliers({0: 10.0, 1: 10.0, 2: 12.0}, 1.3) == {}  # beyond the spread, below the factor
    assert outliers({0: 6.0, 1: 10.0, 2: 14.0, 3: 22.0, 4: 30.0}, 1.3) == {}  # 3 x MAD 8 = 24 above 14


def test_two_hosts_are_compared_with_each_other() -> None:
    """With two hosts median + k*MAD can never fire (the median is their mean, the MAD
    half their gap): the slower one is named when it is `factor` times the other."""
    assert outliers({0: 10.0, 1: 25.0}, 1.3) == {1: Outlier(25.0, 10.0, "the other host")}
    assert outliers({0: 10.0, 1: 12.0}, 1.3) == {}
    assert outliers({0: 7.0}, 1.3) == {}


def test_a_difference_below_the_minimum_excess_is_no_finding() -> None:
    assert outliers({0: 0.001, 1: 0.001, 2: 0.004}, 1.3, min_excess=0.02) == {}
    assert outliers({0: 0.001, 1: 0.001, 2: 0.04}, 1.3, min_excess=0.02) == {2: Outlier(0.04, 0.001, "the median")}


# --- The judged cells.

def _speed(host: int, device_ms: float, host_ms: float, judged: bool, response_ms: float = 0.7) -> HostReport:
    metrics = {"device_ms_per_unit": device_ms, "host_ms_per_unit": host_ms, "response_ms": response_ms,
               "device_units": 50.0, "host_units": 50.0, "response_units": 120.0, "device_judged": float(judged)}
    return HostReport(host, f"vm-{host}", host, observations=(Observation(HOST_SPEED, PASS, "x", "measured",
                                                                          metrics=metrics),))


def test_a_host_slow_at_host_work_fails_naming_the_factor() -> None:
    reports = {0: _speed(0, 30, 20, False), 1: _speed(1, 31, 21, False), 2: _speed(2, 32, 48, False)}
    cells = stragglers.judge_speed(reports, 1.3)
    assert list(cells) == [2] and cells[2].status == FAIL
    assert cells[2].value == "2.3x slower than the median"
    assert cells[2].detail.startswith("host 2 is 2.3x slower than the median on host-local work (host work 2.3x: "
                                      "48.00 ms vs 21.00; slow at 1.3x); measured")


def test_a_host_late_to_work_that_arrives_fails_when_late_by_5_ms_or_more() -> None:
    """A frozen host catches up on CPU time between bursts, but it is late whenever work arrives."""
    reports = {h: _speed(h, 30, 20, False, response_ms=ms) for h, ms in enumerate((0.6, 0.7, 21.0))}
    cells = stragglers.judge_speed(reports, 1.5)
    assert list(cells) == [2] and cells[2].value == "30.0x slower than the median"
    assert "(response to work due every 10 ms 30.0x: 21.00 ms vs 0.70; slow at 1.5x)" in cells[2].detail
    reports = {h: _speed(h, 30, 20, False, response_ms=ms) for h, ms in enumerate((0.6, 0.7, 4.9))}
    assert stragglers.judge_speed(reports, 1.5) == {}  # 7x, yet 4.2 ms late: jitter


def test_device_work_is_judged_only_on_accelerators() -> None:
    cpu = {0: _speed(0, 30, 20, False), 1: _speed(1, 30, 20, False), 2: _speed(2, 90, 20, False)}
    assert stragglers.judge_speed(cpu, 1.3) == {}
    tpu = {h: _speed(h, r.observation(HOST_SPEED).metrics["device_ms_per_unit"], 20, True) for h, r in cpu.items()}
    assert stragglers.judge_speed(tpu, 1.3)[2].value == "3.0x slower than the median"


def _dry(host: int, ms: float) -> HostReport:
    return HostReport(host, "vm", host, observations=(Observation(DRY_RUN, PASS, "4+2 steps", "ran",
                                                                  metrics={"host_ms_per_step": ms}),))


def test_the_dry_runs_own_step_time_names_a_slow_host() -> None:
    cells = dry_run.judge_step_times({0: _dry(0, 2.0), 1: _dry(1, 2.5), 2: _dry(2, 300.0)}, 1.3)
    assert list(cells) == [2] and cells[2].value == "own part of a step 120.0x the median"
    assert dry_run.judge_step_times({0: _dry(0, 2.0), 1: _dry(1, 2.5), 2: _dry(2, 240.0)}, 1.3) == {}  # < 250 ms more


def _moved(host: int, write_s: float, read_s: float, nbytes: float = 8e6) -> HostReport:
    metrics = {"bytes": nbytes, "write_s": write_s, "read_s": read_s, "write_mb_per_s": nbytes / 1e6 / write_s,
               "read_mb_per_s": nbytes / 1e6 / read_s}
    return HostReport(host, "vm", host, observations=(Observation(THROUGHPUT, PASS, "w", "moved", metrics=metrics),))


def test_a_host_far_slower_at_storage_fails_and_the_pod_figure_is_the_slowest_hosts() -> None:
    reports = {0: _moved(0, 0.1, 0.05), 1: _moved(1, 2.0, 0.06), 2: _moved(2, 0.12, 0.05)}
    cells = storage.judge_throughput(reports)
    assert list(cells) == [1] and cells[1].value == "write 16.7x slower than the median"
    assert cells[1].detail.startswith("host 1's write is 16.7x slower than the median (2.00 s vs 0.12 s for 8000000 B)")
    pod = storage.pod_throughput(reports)
    assert (pod.hosts, pod.bytes) == (3, 24e6)
    assert pod.write_mb_per_s == pytest.approx(24 / 2.0) and pod.read_mb_per_s == pytest.approx(24 / 0.06)
    assert storage.judge_throughput({0: _moved(0, 0.01, 0.01), 1: _moved(1, 0.1, 0.1)}) == {}  # 10x, 90 ms


def test_the_pod_throughput_is_in_every_form_of_the_report() -> None:
    from harness.preflight import report as report_files
    from harness.preflight.faults import Fault as InjectedFault
    from harness.preflight.judge import PodContext, judge

    context = PodContext("run-1", 2, None, None, {"data": 2}, InjectedFault(), 3.0)
    report = judge({0: _moved(0, 0.5, 0.25), 1: _moved(1, 0.8, 0.2)}, context)
    document = report_files.to_json(report)
    jsonschema.validate(document, PREFLIGHT_SCHEMA)
    assert document["storage_throughput"] == {"hosts": 2, "bytes": 16e6, "write_mb_per_s": 20.0,
                                              "read_mb_per_s": 64.0}
    assert document["slow_host_factor"] == 1.5
    assert ("storage throughput, 2 host(s) at once: write 20.0 MB/s, read 64.0 MB/s (16.0 MB in all)"
            in report_files.console_lines(report))
    page = report_files.markdown(report)
    assert "## Storage throughput" in page and "| host 1 (vm) | 8000000 | 0.800 | 10.0 | 0.200 | 40.0 |" in page


# --- The transfer itself, on this machine's disk.

def test_throughput_writes_reads_and_removes_its_object(tmp_path: Path) -> None:
    met = []
    cell = storage.throughput(str(tmp_path), "run-1", 3, 3 << 20, lambda: met.append(1) or True, 30)
    assert cell.status == PASS, cell
    assert len(met) == 2 and cell.metrics["bytes"] == 3 << 20
    assert cell.metrics["write_mb_per_s"] == pytest.approx((3 << 20) / 1e6 / cell.metrics["write_s"])
    assert list((tmp_path / storage.SCRATCH / "run-1").iterdir()) == []


def test_a_host_that_cannot_write_fails_yet_meets_the_others_at_both_barriers(tmp_path: Path) -> None:
    """As root a chmod stops nothing: the target's parent is a regular file instead."""
    blocker = tmp_path / "ckpt"
    blocker.write_bytes(b"")
    met = []
    cell = storage.throughput(str(blocker), "run-1", 1, 1 << 20, lambda: met.append(1) or True, 30)
    assert len(met) == 2 and cell.status == FAIL
    assert cell.value == "write failed: NotADirectoryError"
    assert f"{blocker}/{storage.SCRATCH}/run-1/throughput-host1: write of 1048576 B failed" in cell.detail


def test_the_shard_is_parameter_and_optimizer_bytes_over_the_hosts() -> None:
    """Oracle: the initialised state's own bytes (adam: params, mu, nu, a step count)."""
    import jax

    from harness.config.presets import load_preset
    from harness.runtime.mesh import make_mesh
    from harness.train.step import init_state

    config = load_preset("smoke").replace(fsdp_devices=1)
    state = init_state(config, make_mesh(1, jax.devices()[:1]))
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert storage.shard_bytes(config, 1) == total
    assert storage.shard_bytes(config, 3) == -(-total // 3)


# --- Whole preflights on local pods, the faults made from outside.

def _command(tmp_path: Path, cache: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "harness.preflight", "--config", "local-2x4", "--cpu_devices", "2",
            "--fsdp_devices", "2", "--batch_size", "24", "--run_dir", str(tmp_path / "run"),
            "--checkpoint_dir", str(tmp_path / "ckpt"), *compile_cache_flags(cache), *flags]


def _report(tmp_path: Path) -> dict | None:
    path = tmp_path / "run" / "preflight.json"
    return json.loads(path.read_text()) if path.exists() else None


def braked_preflight(tmp_path: Path, cache: Path, *, slow_host: int | None, checks: str = "host_speed",
                     ) -> tuple[int, dict | None, str]:
    """A 3x2 pod's preflight with `slow_host` frozen 60 ms of every 100 for the whole run
    (None: a healthy pod); the exit code, the report and the launcher's output."""
    log = tmp_path / "pod.log"
    launcher = start_local_pod(3, 2, _command(tmp_path, cache, "--checks", checks), log_path=log,
                               timeout=POD_TIMEOUT_S, env=harness_env())
    try:
        if slow_host is None:
            launcher.wait(timeout=POD_TIMEOUT_S + 30)
        else:
            with braking(launcher, slow_host) as brake:
                launcher.wait(timeout=POD_TIMEOUT_S + 30)
            assert brake.bursts > 10, brake.bursts
    finally:
        stop_local_pod(launcher, local_pod_hosts(launcher.pid))
    return launcher.returncode, _report(tmp_path), log.read_text(errors="replace")


def test_a_host_slowed_from_outside_is_named(tmp_path: Path) -> None:
    code, report, output = braked_preflight(tmp_path, tmp_path / "cache", slow_host=2)
    assert code == 1 and report is not None, output[-4000:]
    jsonschema.validate(report, PREFLIGHT_SCHEMA)
    assert [(f["check"], f["host"]) for f in report["failures"]] == [("host speed", 2)], report["failures"]
    assert report["failures"][0]["detail"].startswith("host 2 is "), report["failures"][0]
    assert "x slower than the median on host-local work (" in report["failures"][0]["detail"]
    assert "response to work due every 10 ms " in report["failures"][0]["detail"]
    assert "harness-preflight: FAIL: host 2: host speed: " in output


def test_a_host_whose_storage_is_slow_is_named(tmp_path: Path, gcs_emulator) -> None:
    """gs:// through the fault proxy, which holds every request that names host 1's
    throughput object (its upload and its reads) for 1.5 s; the probe, the round trip and
    host 0 go through untouched."""
    with FaultProxy(gcs_emulator.url, timeout_s=30) as proxy:
        proxy.add_rule(Fault.DELAY, mentions="throughput-host1", count=None, delay_s=1.5)
        directory = f"gs://{gcs_emulator.bucket}/preflight-throughput-{os.getpid()}"
        command = _command(tmp_path, tmp_path / "cache", "--checks", "storage", "--throughput_max_bytes",
                           str(2 << 20))
        command[command.index("--checkpoint_dir") + 1] = directory
        result = launch_local(2, 2, command, timeout=POD_TIMEOUT_S, env=harness_env(HARNESS_GCS_EMULATOR=proxy.url))
        delayed = proxy.fault_counts().get("delay", 0)
    report = _report(tmp_path)
    assert result.returncode == 1 and report is not None, failure_report(result)
    jsonschema.validate(report, PREFLIGHT_SCHEMA)
    assert [(f["check"], f["host"]) for f in report["failures"]] == [("storage throughput", 1)], report["failures"]
    slow = report["failures"]
    assert slow[0]["detail"].startswith("host 1's write is ") and "; host 1's read is " in slow[0]["detail"], slow
    assert "x slower than the other host" in report["failures"][0]["detail"]
    assert delayed >= 2  # the upload and at least one read
    pod = report["storage_throughput"]
    assert pod["hosts"] == 2 and pod["bytes"] == 2 * min(2 << 20, pod["bytes"] / 2)
    cells = {c["host"]: c for check in report["checks"] if check["check"] == "storage throughput"
             for c in check["cells"]}
    assert cells[1]["metrics"]["write_s"] >= 1.5 > cells[0]["metrics"]["write_s"]
    assert "storage throughput, 2 host(s) at once: write " in result.stdout


# --- Soak: the rates over ten runs each (the machine is shared: note the load printed).

@pytest.mark.soak
def test_soak_a_slowed_host_is_named_in_9_of_10_and_a_healthy_pod_passes_10_of_10(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    named, false_alarms, notes = 0, 0, []
    for run in range(SOAK_RUNS):
        for slow_host in (2, None):
            where = tmp_path / f"{run}-{slow_host}"
            where.mkdir()
            code, report, output = braked_preflight(where, cache, slow_host=slow_host)
            assert report is not None, output[-4000:]
            failed = [(f["check"], f["host"]) for f in report["failures"]]
            if slow_host is None:
                false_alarms += code != 0
            else:
                named += failed == [("host speed", 2)]
            speed = {c["host"]: c["metrics"] for check in report["checks"] if check["check"] == "host speed"
                     for c in check["cells"]}
            measured = ", ".join(f"{h}: host {m.get('host_ms_per_unit', 0):.1f} ms, response "
                                 f"{m.get('response_ms', 0):.2f} ms" for h, m in sorted(speed.items()))
            notes.append(f"run {run} slow host {slow_host}: exit {code}, load {os.getloadavg()[0]:.1f}, {failed} "
                         f"({measured})")
    summary = f"slowed host named {named}/{SOAK_RUNS}, healthy pod failed {false_alarms}/{SOAK_RUNS}"
    print(summary, *notes, sep="\n")
    assert named >= 9 and false_alarms == 0, "\n".join([summary, *notes])
