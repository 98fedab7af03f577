"""Progress lines of the long commands, as their printers write them: harness-fit's
compiles (plain lines, and the live bar a terminal gets), preflight's finished checks
and the pod launcher's provisioning steps. The commands themselves print them in tests/test_fit_cli.py and
tests/test_preflight.py; the launchers' in tests/test_tpu_pod_launcher.py.

    .venv/bin/python -m pytest -q tests/test_progress.py
"""

from __future__ import annotations

import io
import re

from harness.fit.compile import CompileOutcome, OutOfMemory
from harness.fit.progress import CompileProgress
from harness.fit.topology import resolve
from harness.fit.units import GIB
from harness.preflight.faults import Fault
from harness.preflight.judge import PodContext, judge
from harness.preflight.progress import CheckLines
from harness.preflight.results import DEVICES, FAIL, PASS, RENDEZVOUS, SKIP, STORAGE, HostReport, Observation
from launch.provision_progress import ProvisionProgress

HBM = int(30.75 * GIB)
SETTINGS = "mlp, float32 params, float32 compute, remat none, mesh data=1 fsdp=4"
FITS = CompileOutcome(64, 1.25, memory={"peak_memory": 3 * GIB})
OOM = CompileOutcome(128, 2.5, oom=OutOfMemory("RESOURCE_EXHAUSTED: Ran out of memory", 40 * GIB, HBM))


def _two_compiles(progress: CompileProgress) -> None:
    with progress:
        progress.begin(resolve("v4-8"), SETTINGS, HBM, total=3)
        progress.started(64, 4)
        progress.finished(FITS)
        progress.started(128, 4)
        progress.finished(OOM)


def test_fit_prints_each_compile_as_it_starts_and_ends():
    stream = io.StringIO()
    _two_compiles(CompileProgress(stream, live=False))

    assert stream.getvalue().splitlines() == [
        f"harness-fit: compile 1 (of at most 3): batch 64 (16 per device) on v4-8: {SETTINGS}",
        "harness-fit: compile 1: batch 64 on v4-8 fits: peak 3.00 GiB of 30.75 GiB HBM (1.2 s)",
        f"harness-fit: compile 2 (of at most 3): batch 128 (32 per device) on v4-8: {SETTINGS}",
        "harness-fit: compile 2: batch 128 on v4-8 out of memory: needs 40.00 GiB of 30.75 GiB HBM (2.5 s)",
    ]


def test_a_terminal_gets_a_bar_with_each_compile_printed_above_it():
    stream = io.StringIO()
    _two_compiles(CompileProgress(stream, live=True))

    text = stream.getvalue()
    screens = [screen.rstrip() for screen in re.split(r"[\r\n]", text)]
    assert "harness-fit: compile 1: batch 64 on v4-8 fits: peak 3.00 GiB of 30.75 GiB HBM (1.2 s)" in screens
    assert "harness-fit: batch 64 fits 1/3 compiles [00:00]" in screens
    assert "harness-fit: batch 128 out of memory 2/3 compiles [00:00]" in screens
    assert any(re.fullmatch(r"harness-fit: compiling batch 128 on v4-8: \d+ s 1/3 compiles \[00:00\]", screen)
               for screen in screens), screens
    assert re.search(r"\r {20,}\r$", text)  # the bar is wiped at the end, before the report


def _host(host: int, *cells: Observation) -> HostReport:
    return HostReport(host, f"vm-{host}", 100 + host, observations=cells)


def test_preflight_shows_each_check_once_when_every_host_has_it():
    context = PodContext("run", 2, None, None, {}, Fault("", -1, 0), 3.0)
    stream = io.StringIO()
    lines = CheckLines(stream)
    first = {0: _host(0, Observation(RENDEZVOUS, PASS, "arrived", seconds=0.5)),
             1: _host(1, Observation(RENDEZVOUS, PASS, "arrived", seconds=1.25),
                      Observation(DEVICES, PASS, "4 devices", seconds=0.1))}
    lines.show(first, judge(first, context, expected_hosts=range(2)))
    second = {h: _host(h, Observation(RENDEZVOUS, PASS, "arrived", seconds=0.5),
                       Observation(DEVICES, FAIL if h == 1 else PASS, "1/65536 wrong" if h else "ok", seconds=0.25 * h),
                       Observation(STORAGE, SKIP, "not selected", "not in --checks")) for h in range(2)}
    lines.show(second, judge(second, context, expected_hosts=range(2)))

    assert stream.getvalue().splitlines() == [
        "harness-preflight: check rendezvous: PASS on 2 host(s) (slowest 1.25 s)",
        "harness-preflight: check devices: FAIL on host 1 of 2: 1/65536 wrong (slowest 0.25 s)",
        "harness-preflight: check storage: SKIP (not selected)",
    ]


def test_the_pod_launcher_times_each_workers_steps_and_names_the_slowest():
    said: list[str] = []
    now = [100.0]
    progress = ProvisionProgress(2, said.append, clock=lambda: now[0])
    observers = [progress.watch(0), progress.watch(1)]
    now[0] = 101.5
    shown = [observers[1]("podharness-step: release unpacked\n"),
             observers[1]("podharness: installing 31 requirements into /home/w/podharness/venv\n")]
    now[0] = 112.25
    shown.append(observers[1]("podharness-step: harness starting\n"))
    now[0] = 140.0
    shown.append(observers[0]("podharness-step: harness starting\n"))

    assert shown == [True, False, True, True]  # the supervisor relays only the line not shown here

    assert said == ["worker 1 of 2: release unpacked (1.5 s)", "worker 1 of 2: harness starting (12.2 s)",
                    "worker 0 of 2: harness starting (40.0 s)",
                    "all 2 workers started the harness; the slowest was worker 0 (40.0 s)"]
