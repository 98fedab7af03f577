"""The preflight on one host, in the order every host runs it.

1. Rendezvous (rendezvous.py): the roll call, then jax.distributed. If the pod never
   assembles, process 0 writes a report with the rendezvous row only, naming who never
   came; the others say what they saw and exit 1.
2. Consistency facts (local), then the first exchange. Every host judges the same
   reports the same way (judge.py); if the hosts disagree, no collective runs after
   this (a different program on one host can hang them all).
3. Devices, host speed and interconnect (collectives), the storage probe (local), then
   an exchange: a host that cannot write stops the storage throughput, the checkpoint
   round trip and the dry run on all hosts, instead of leaving the others in barriers.
4. The storage throughput and the checkpoint round trip, an exchange; then the dry run
   (the real training loop),
   the final exchange, and the verdict: process 0 prints the table and writes
   preflight.json and preflight.md, every host prints the summary line, and all exit
   with the same code (0: no FAIL, 1: a FAIL; 42, the harness's restartable code, when
   the watchdog finds a lost host).

Every check runs under a deadline and the watchdog (guard.py); when one gives up,
process 0 first writes the report it has. Before the dry run, whose training loop has
its own watchdog, process 0 writes a provisional report that marks the dry run as not
finished, replaced when it does.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import TextIO

from harness.config import TrainConfig
from harness.errors import UsageError, first_line
from harness.preflight import report as report_files
from harness.preflight.consistency import collect_facts
from harness.preflight.devices import device_check
from harness.preflight.dry_run import dry_run
from harness.preflight.exchange import exchange
from harness.preflight.faults import NEVER_START, Fault, check_fault
from harness.preflight.guard import Deadline, Progress, barrier, bounded, silent_hosts
from harness.preflight.interconnect import measure, no_axis_observation
from harness.preflight.judge import Abort, PodContext, Report, all_passed, judge, rendezvous_failed, same_program
from harness.preflight.options import PreflightOptions
from harness.preflight.progress import CheckLines
from harness.preflight.rendezvous import Coordinates, Joined, join, missing_host_observation, pod_coordinates
from harness.preflight import options as selectable
from harness.preflight.results import (CONSISTENCY, DEVICES, DRY_RUN, FAIL, HOST_SPEED, INTERCONNECT, PASS,
                                       RENDEZVOUS, ROUND_TRIP, SKIP, STORAGE, THROUGHPUT, HostReport, Observation,
                                       skipped, timed)
from harness.preflight.rollcall import REPLY_MARGIN_S
from harness.preflight.storage import (probe, probe_failed, probe_target, remove_scratch, round_trip, shard_bytes,
                                      throughput)
from harness.preflight.stragglers import MEASURE_S, measure_speed
from harness.runtime import storage
from harness.runtime.devices import configure_devices
from harness.runtime.watchdog import lost_hosts_line

PROG = "harness-preflight"
# Why a check did not run: (the table's words, the page's sentence).
NOT_SELECTED = ("not selected", "not in --checks")
DISAGREE = ("hosts differ", "the hosts disagree on what they run (consistency FAIL): collectives could hang, "
                            "so none ran")
UNWRITABLE = ("storage failed", "a host cannot use the checkpoint dir (storage FAIL): nothing was saved")
NOT_READY = ("storage failed", "the checkpoint dir failed a check (storage or round trip): no training run")


def run(config: TrainConfig, options: PreflightOptions) -> int:
    """The whole preflight on this host; the exit code (UsageError for bad input)."""
    storage.configure_gcs_emulator_from_env()
    configure_devices(platform=config.devices.platform, cpu_devices=config.devices.cpu_devices,
                      cpu_fast_compile=config.devices.cpu_fast_compile,
                      compilation_cache_dir=config.devices.compilation_cache_dir)
    coordinates = pod_coordinates(config.distributed)
    host, num = (coordinates.process_id, coordinates.num_processes) if coordinates else (0, 1)
    check_fault(options.testing_fault, options.testing_fault_host, num)
    fault = Fault(options.testing_fault, options.testing_fault_host, host)
    if fault.here(NEVER_START):
        print(f"{PROG}: host {host}: testing fault {NEVER_START}: not joining the pod", file=sys.stderr, flush=True)
        time.sleep(config.distributed.initialization_timeout + REPLY_MARGIN_S + 5)
        return 1
    joined = join(config, coordinates)
    if not joined.joined:
        return _pod_never_assembled(config, options, coordinates, joined, fault)
    return Preflight(config, options, coordinates, joined, fault).run()


def _context(options: PreflightOptions, coordinates: Coordinates | None, run_id: str, fault: Fault,
             mesh: dict[str, int]) -> PodContext:
    names = dict(enumerate(coordinates.host_names)) if coordinates else {}
    return PodContext(run_id or "none", coordinates.num_processes if coordinates else 1, options.preset,
                      coordinates.address if coordinates else None, mesh, fault, options.straggler_factor, names,
                      slow_host_factor=options.slow_host_factor)


def _pod_never_assembled(config: TrainConfig, options: PreflightOptions, coordinates: Coordinates,
                         joined: Joined, fault: Fault) -> int:
    """Process 0 names who never came (and writes the report); a host that never reached
    process 0 names it; a host the coordinator turned away says so. The names also go out
    in the watchdog's line, which the launchers parse to name and stop those hosts."""
    context = _context(options, coordinates, joined.run_id, fault, {})
    me = coordinates.process_id
    if joined.roll is not None:
        roll = joined.roll
        if roll.missing:  # the launchers parse this line and name (and stop) those hosts
            print(lost_hosts_line(me, roll.missing, f"never arrived within {config.distributed.initialization_timeout} s"),
                  file=sys.stderr, flush=True)
        cells = {h: Observation(RENDEZVOUS, PASS, f"arrived after {a.after_s:.1f} s",
                                f"said hello {a.after_s:.2f} s after the roll call opened")
                 for h, a in roll.arrivals.items()}
        cells.update({h: missing_host_observation(h, config.distributed.initialization_timeout, context.host_names.get(h))
                      for h in roll.missing})
        for named, text in roll.problems:
            cells[me if named is None else named] = Observation(RENDEZVOUS, FAIL, text[:120], text)
        hostnames = {h: a.hello.hostname for h, a in roll.arrivals.items()}
        pids = {h: a.hello.pid for h, a in roll.arrivals.items()}
        report = rendezvous_failed(context, cells, hostnames, pids)
        _publish(report, config.run.run_dir, sys.stdout)
        return report.exit_code
    if joined.probe is not None and joined.probe.reply is not None:
        print(f"{PROG}: host {me}: FAIL: rendezvous: the coordinator gave up: {joined.probe.reply.reason}",
              file=sys.stderr, flush=True)
        return 1
    reached = joined.probe is not None and joined.probe.reached
    why = (f"the coordinator did not answer the roll call: {joined.probe.error}" if reached else
           f"the coordinator was unreachable for {config.distributed.initialization_timeout} s")
    print(lost_hosts_line(me, [0], why), file=sys.stderr, flush=True)
    unreachable = Observation(RENDEZVOUS, FAIL, f"{'no answer to' if reached else 'unreachable from'} host {me}",
                              joined.observation.detail)
    waited = dataclasses.replace(joined.observation, status=SKIP, value="could not join")
    report = rendezvous_failed(context, {0: unreachable, me: waited}, {me: socket.gethostname()}, {me: os.getpid()})
    print("\n".join(report_files.console_lines(report)), flush=True)
    print(f"{PROG}: host {me}: only process 0 writes the report files; nothing was written", flush=True)
    return report.exit_code


def _publish(report: Report, run_dir: str, stream: TextIO | None) -> None:
    """Writes both files; shows the table on `stream` (None: show nothing)."""
    json_path, page_path = report_files.write(report, run_dir)
    if stream is not None:
        print("\n".join(report_files.console_lines(report)), file=stream, flush=True)
        print(f"{PROG}: report: {json_path} and {page_path}", file=stream, flush=True)


class Preflight:
    """Every check after the rendezvous, on one host of an assembled pod."""

    def __init__(self, config: TrainConfig, options: PreflightOptions, coordinates: Coordinates | None,
                 joined: Joined, fault: Fault):
        import jax

        from harness.runtime.mesh import make_mesh
        from harness.runtime.jax_internals import coordination_client
        from harness.runtime.watchdog import SILENCE_FRACTION, HostWatchdog

        self.config, self.options, self.fault = config, options, fault
        self.run_id = joined.run_id
        self.host, self.num_hosts = jax.process_index(), jax.process_count()
        self.primary = self.host == 0
        try:
            mesh = dict(make_mesh(config.mesh.fsdp_devices).shape)
        except UsageError:
            mesh = {}
        self.context = _context(options, coordinates, joined.run_id, fault, mesh)
        self.report = HostReport(self.host, socket.gethostname(), os.getpid(), observations=(joined.observation,))
        self.received: dict[int, HostReport | str] = {}
        self.row = RENDEZVOUS
        self.stream = sys.stdout  # the console, even while the dry run's output goes to its log
        self.client = coordination_client() if self.num_hosts > 1 else None
        self.progress = Progress(self.run_id, self.host, self.num_hosts, self.client)
        self.check_lines = CheckLines(self.stream)
        self.watchdog = HostWatchdog(silence_s=SILENCE_FRACTION * config.distributed.heartbeat_timeout, exit_fn=self._host_lost)

    def run(self) -> int:
        options = self.options
        self.watchdog.start()
        try:
            if options.runs(selectable.CONSISTENCY):
                self._stage(CONSISTENCY, self._consistency)
            else:
                self._skip(CONSISTENCY, NOT_SELECTED)
            self._exchange()
            safe = not options.runs(selectable.CONSISTENCY) or same_program(self.received)
            self._collective_or_skip(DEVICES, selectable.DEVICES, safe, lambda: device_check(self.fault))
            self._collective_or_skip(HOST_SPEED, selectable.HOST_SPEED, safe, self._host_speed)
            self._collective_or_skip(INTERCONNECT, selectable.INTERCONNECT, safe, self._interconnect)
            if options.runs(selectable.STORAGE):
                self._local(STORAGE, self._probe)
            else:
                self._skip(STORAGE, NOT_SELECTED)
            self._exchange()
            writable = not options.runs(selectable.STORAGE) or all_passed(self.received, STORAGE)
            self._collective_or_skip(THROUGHPUT, selectable.STORAGE, safe and writable, self._throughput,
                                     why=DISAGREE if not safe else UNWRITABLE)
            self._collective_or_skip(ROUND_TRIP, selectable.STORAGE, safe and writable, self._round_trip,
                                     why=DISAGREE if not safe else UNWRITABLE)
            self._exchange()
            ready = writable and (not options.runs(selectable.STORAGE) or all_passed(self.received, ROUND_TRIP))
        finally:
            self.watchdog.stop()
        if options.runs(selectable.DRY_RUN) and safe and ready:
            if self.primary:
                self._write_partial(Abort(DRY_RUN, "the dry run did not finish: a host stopped during it "
                                                   "(see the hosts' and the launcher's lines)"), stream=None)
            self._stage(DRY_RUN, lambda: dry_run(self.config, self.run_id, options.dry_run_steps))
        else:
            self._skip(DRY_RUN, NOT_SELECTED if not options.runs(selectable.DRY_RUN) else
                       DISAGREE if not safe else NOT_READY)
        self._exchange()
        return self._finish()

    # --- Stages.

    def _stage(self, row: str, work: Callable[[], Observation]) -> None:
        self.row = row
        self.progress.enter(row)
        with Deadline(row, self.options.check_timeout, self._expired):
            observation = timed(row, work)
        self.report = self.report.with_observations(observation)

    def _local(self, row: str, work: Callable[[], Observation]) -> None:
        """Host-local work, abandoned (FAIL) if it outlives --check_timeout."""
        self._stage(row, lambda: bounded(row, work, self.options.check_timeout))

    def _collective_or_skip(self, row: str, check: str, safe: bool, work: Callable[[], Observation],
                            why: tuple[str, str] = DISAGREE) -> None:
        if not self.options.runs(check):
            self._skip(row, NOT_SELECTED)
        elif not safe:
            self._skip(row, why)
        else:
            self._stage(row, work)

    def _skip(self, row: str, why: tuple[str, str]) -> None:
        self.report = self.report.with_observations(skipped(row, *why))

    def _exchange(self) -> None:
        """All reports to all hosts; a collective that fails means the pod is broken."""
        import jax

        self.progress.enter(f"the exchange after {self.row}")
        with Deadline(self.row, self.options.check_timeout, self._expired):
            try:
                self.received = exchange(self.report)
            except jax.errors.JaxRuntimeError as err:
                self.watchdog.wait_for_verdict()  # names a lost host and exits, if there is one
                self._give_up(Abort(self.row, f"exchanging results failed while every host answers: "
                                              f"{first_line(err)}"))
        if self.primary:
            self.check_lines.show(self.received, judge(self.received, self.context,
                                                       expected_hosts=range(self.num_hosts)))

    def _consistency(self) -> Observation:
        """Host-local (the step is lowered, not run): bounded; the facts join this
        host's report only if they all came in time."""
        facts: dict[str, str] = {}
        files: list[tuple[str, str]] = []

        def collect() -> Observation:
            found, digests = collect_facts(self.config, self.options.preset, self.fault)
            facts.update(found)
            files.extend(digests)
            return Observation(CONSISTENCY, PASS, f"{len(facts)} facts", "facts collected")

        observation = bounded(CONSISTENCY, collect, self.options.check_timeout)
        if observation.status == PASS:
            self.report = dataclasses.replace(self.report, facts=dict(facts), code_files=tuple(files))
        return observation

    def _interconnect(self) -> Observation:
        options = self.options
        timings = measure(self.config.mesh.fsdp_devices, options.interconnect_sizes, options.interconnect_repeats)
        self.report = dataclasses.replace(self.report, timings=timings)
        if not timings:
            return no_axis_observation()
        return Observation(INTERCONNECT, PASS, f"{len(timings)} measurements", "judged across hosts")

    def _probe(self) -> Observation:
        target = probe_target(self.config.checkpoint.dir, self.run_id, self.host, self.fault)
        try:
            return probe(target)
        except OSError as err:
            return probe_failed(err, target)

    def _meet(self) -> bool:
        return barrier(self.options.check_timeout)

    def _host_speed(self) -> Observation:
        return measure_speed(MEASURE_S, self._meet)

    def _throughput(self) -> Observation:
        """Both transfers together stay within the stage's --check_timeout, barriers included."""
        nbytes = min(shard_bytes(self.config, self.num_hosts), self.options.throughput_max_bytes)
        return throughput(self.config.checkpoint.dir, self.run_id, self.host, nbytes, self._meet,
                          0.4 * self.options.check_timeout)

    def _round_trip(self) -> Observation:
        return round_trip(self.config.checkpoint.dir, self.run_id, self.config.mesh.fsdp_devices,
                          int(self.options.check_timeout))

    # --- The end, and the ways to stop early.

    def _finish(self) -> int:
        final = judge(self.received, self.context, expected_hosts=range(self.num_hosts))
        if self.primary:
            _publish(final, self.config.run.run_dir, self.stream)
            try:
                remove_scratch(self.config.checkpoint.dir, self.run_id)
            except OSError as err:
                print(f"{PROG}: could not remove the preflight's scratch files: {err}", file=sys.stderr, flush=True)
        else:
            print(f"{PROG}: seen from host {self.host}: {final.summary()}", file=self.stream, flush=True)
        # Nobody exits (and makes a launcher stop the rest) before process 0 has written the report.
        if not barrier(self.options.check_timeout):
            print(f"{PROG}: error: host {self.host}: a host did not reach the end within "
                  f"{self.options.check_timeout:g} s; exiting", file=sys.stderr, flush=True)
            self.stream.flush()
            os._exit(final.exit_code or 1)
        return final.exit_code

    def _write_partial(self, abort: Abort, *, stream: TextIO | None) -> None:
        received = {**self.received, self.host: self.report}
        _publish(judge(received, self.context, abort=abort, expected_hosts=range(self.num_hosts)),
                 self.config.run.run_dir, stream)

    def _give_up(self, abort: Abort, code: int = 1) -> None:
        """Stops this process at once (a collective may be stuck): the report first, on process 0."""
        print(f"{PROG}: error: host {self.host}: {abort.reason}", file=sys.stderr, flush=True)
        if self.primary:
            try:
                self._write_partial(abort, stream=self.stream)
            except Exception as err:  # stopping matters more than the report
                print(f"{PROG}: could not write the report: {err}", file=sys.stderr, flush=True)
        self.stream.flush()
        os._exit(code)

    def _expired(self, row: str) -> None:
        late, where = self.progress.laggards()
        reason = f"{row} did not finish within {self.options.check_timeout:g} s (--check_timeout)"
        if late:
            reason += "; behind the others: " + ", ".join(f"host {h} (in {where[h]})" for h in late)
        self._give_up(Abort(row, reason, tuple(late)))

    def _host_lost(self, code: int) -> None:
        """The watchdog's exit (it has printed its line): name the silent hosts in the
        report too, and exit with the watchdog's code (the harness's restartable one)."""
        silent = silent_hosts(self.client, self.host, self.num_hosts) if self.client is not None else []
        who = f"host(s) {', '.join(map(str, silent))}" if silent else "a host"
        self._give_up(Abort(self.row, f"{who} stopped responding: no heartbeat (the watchdog's line says more)",
                            tuple(silent)), code)
