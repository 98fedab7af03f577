"""harness-preflight's parts, in this process: the wire format against hostile bytes, the
roll call over real sockets, the cross-host verdicts against hand-made oracles, the
device check on this process's 8 CPU devices, the accelerator-holder scan on a fake
/proc, the time bounds, and the report's schema.

    .venv/bin/python -m pytest -q tests/test_preflight_units.py
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from pathlib import Path

import jsonschema
import msgpack
import numpy as np
import pytest
from hypothesis import given, strategies as st

from harness.config import TrainConfig
from harness.preflight import consistency, devices, interconnect, report as report_files
from harness.preflight.faults import WRONG_DEVICE_RESULT, Fault
from harness.preflight.guard import Deadline, Progress, bounded, silent_hosts
from harness.preflight.judge import Abort, PodContext, judge, rendezvous_failed, same_program
from harness.preflight.results import FAIL, PASS, SKIP, HostReport, Observation, Timing
from harness.preflight.rollcall import RollCallServer, call_roll
from harness.preflight.schema import PREFLIGHT_SCHEMA
from harness.preflight.wire import (MAX_REPORT_BYTES, Hello, Reply, decode_hello, decode_reply, decode_report,
                                    encode_hello, encode_reply, encode_report)
from harness.runtime.messages import MAX_MESSAGE_CHARS, VERSION, MessageError
from harness.runtime.watchdog import DONE
from launch.local import free_port
from tests.support.hostile import TAMPERS, Tamper, hostile
from tests.support.coordination import FakeKeyValueStore

FACTS = {"jax": "0.10.2", "code": "aaaa (40 files)", "train step": "0123456789abcdef", "platform": "cpu"}


def host_report(host: int, *observations: Observation, facts: dict | None = None,
                timings: tuple[Timing, ...] = ()) -> HostReport:
    return HostReport(host, f"vm-{host}", 1000 + host, dict(FACTS if facts is None else facts), observations, timings)


def context(num: int, **changes) -> PodContext:
    base = PodContext("run-1", num, "local-2x4", "127.0.0.1:1", {"data": num, "fsdp": 4}, Fault(), 3.0)
    return dataclasses.replace(base, **changes)


# --- wire.py


def test_a_report_survives_the_wire_and_non_finite_metrics_are_left_out() -> None:
    obs = Observation("devices", FAIL, "x" * 500, "why", 0.25, {"time_ms": 3.5, "bad": float("nan")})
    timing = Timing("all_gather", "data", 2, 65536, (0.001, 0.002), (0.003, 0.004))
    decoded = decode_report(encode_report(host_report(3, obs, timings=(timing,))), source="test")
    assert decoded.observations[0].metrics == {"time_ms": 3.5}
    assert len(decoded.observations[0].value) == 200
    assert decoded.timings == (timing,)
    assert decoded.facts == FACTS and (decoded.host, decoded.hostname, decoded.pid) == (3, "vm-3", 1003)


def _wire(version: int = VERSION, kind: str = "host_report", **changes) -> bytes:
    body = {"host": 0, "hostname": "vm", "pid": 1, "facts": {}, "code_files": [], "observations": _cell(),
            "timings": []}
    body.update(changes)
    return msgpack.packb([version, kind, body], use_bin_type=True)


def _cell(**changes) -> list[dict]:
    return [{"row": "devices", "status": "PASS", "value": "", "detail": "", "seconds": 0.0, "metrics": {}, **changes}]


_TIMING = {"collective": "all_gather", "axis": "data", "axis_size": 2, "nbytes": 1, "arrive_s": [], "done_s": []}


@pytest.mark.parametrize("data, problem", [
    (b"", "empty message"),
    (_wire()[:-3], "not valid msgpack (Input data was truncated)"),
    (_wire() + b"\x00", "not valid msgpack (MessagePack data is malformed: trailing characters (byte 146))"),
    (_wire(version=2), f"version 2 is not the supported version {VERSION}"),
    (_wire(kind="hello"), "a message of kind 'hello', expected 'host_report'"),
    (_wire(host=True), "Expected `int`, got `bool` - at `$.host`"),
    (_wire(host=-1), "Expected `int` >= 0 - at `$.host`"),
    (_wire(pid=1.0), "Expected `int`, got `float` - at `$.pid`"),
    (_wire(extra=1), "Object contains unknown field `extra`"),
    (_wire(observations=_cell(status="GREAT")), "Invalid enum value 'GREAT' - at `$.observations[0].status`"),
    (_wire(observations=_cell(row="lunch")), "Invalid enum value 'lunch' - at `$.observations[0].row`"),
    (_wire(observations=_cell(seconds="1")), "Expected `float`, got `str` - at `$.observations[0].seconds`"),
    (_wire(observations=_cell(metrics={"x": float("inf")})),
     "Expected a finite `float` - at `$.observations[0].metrics[...]`"),
    (_wire(facts={"jax": 10}), "Expected `str`, got `int` - at `$.facts[...]`"),
    (_wire(facts={"k" * 65: "v"}), "Expected `str` of length <= 64 - at `key` in `$.facts`"),
    (_wire(hostname="h" * 201), "Expected `str` of length <= 200 - at `$.hostname`"),
    (_wire(code_files=[["a", "b", "c"]]), "Expected `array` of length 2, got 3 - at `$.code_files[0]`"),
    (_wire(timings=[{**_TIMING, "arrive_s": [0.1] * 1001}]),
     "Expected `array` of length <= 1000 - at `$.timings[0].arrive_s`"),
    (msgpack.packb([1, 2]), "not a [version, kind, body] frame: Expected `array` of length 3, got 2"),
    (msgpack.packb({"version": VERSION}), "not a [version, kind, body] frame: Expected `array`, got `object`"),
    (b"\x00" * (MAX_REPORT_BYTES + 1), f"{MAX_REPORT_BYTES + 1} bytes is over the limit of {MAX_REPORT_BYTES}"),
])
def test_hostile_reports_are_refused_naming_the_field(data: bytes, problem: str) -> None:
    with pytest.raises(MessageError) as raised:
        decode_report(data, source="report from host 1")
    assert str(raised.value) == f"report from host 1: {problem}"


@hostile(300)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_message_error_only(data: bytes) -> None:
    for decode in (decode_report, decode_hello, decode_reply):
        try:
            decode(data, source="fuzz")
        except MessageError:
            pass


_REPORT = encode_report(host_report(2, Observation("devices", FAIL, "x", "why", 0.25, {"time_ms": 3.5}),
                                    timings=(Timing("all_gather", "data", 2, 65536, (0.001,), (0.003,)),)))


@hostile(600)
@given(TAMPERS)
def test_a_tampered_report_decodes_to_what_it_says_or_is_refused(tamper: Tamper) -> None:
    """What a tamper makes of a real report: a MessageError naming the source in at most
    MAX_MESSAGE_CHARS, or a report that says the same on a second trip over the wire."""
    try:
        report = decode_report(tamper(_REPORT), source="report from host 2")
    except MessageError as err:
        assert str(err).startswith("report from host 2: ") and len(str(err)) <= MAX_MESSAGE_CHARS
        return
    assert decode_report(encode_report(report), source="again") == report


def test_roll_call_messages_round_trip() -> None:
    hello = Hello(2, 3, "vm-2", 77, "local-1")
    assert decode_hello(encode_hello(hello), source="t") == hello
    reply = Reply("abort", "run", (1, 4), "host(s) 1, 4 never arrived")
    assert decode_reply(encode_reply(reply), source="t") == reply


# --- rollcall.py (real sockets on 127.0.0.1)


def _roll(num: int, present: list[int], timeout: float) -> tuple[dict, object]:
    port = free_port()
    server = RollCallServer(port, num, timeout, "run-7", log=print).start()
    probes: dict[int, object] = {}

    def call(host: int) -> None:
        probes[host] = call_roll(f"127.0.0.1:{port}", Hello(host, num, f"vm-{host}", os.getpid(), "run-7"), timeout)

    threads = [threading.Thread(target=call, args=(h,)) for h in present]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 20)
    roll = server.wait()
    with socket.create_server(("", port)):  # the port is free again at once, for JAX to bind
        pass
    return probes, roll


def test_the_roll_call_says_go_when_every_host_arrives() -> None:
    probes, roll = _roll(3, [0, 1, 2], timeout=10)
    assert sorted(roll.arrivals) == [0, 1, 2] and roll.missing == [] and roll.problems == []
    assert {(p.reply.kind, p.reply.run_id) for p in probes.values()} == {("go", "run-7")}


def test_the_roll_call_names_the_host_that_never_arrives() -> None:
    probes, roll = _roll(3, [0, 2], timeout=1.0)
    assert roll.missing == [1]
    for probe in probes.values():
        assert probe.reply.kind == "abort" and probe.reply.missing == (1,)
        assert "host(s) 1 never arrived within 1 s" in probe.reply.reason


def test_a_host_claimed_twice_is_named() -> None:
    port = free_port()
    server = RollCallServer(port, 2, 1.0, "run", log=print).start()
    results = []
    threads = [threading.Thread(target=lambda name=name: results.append(
        call_roll(f"127.0.0.1:{port}", Hello(1, 2, name, 1, "run"), 1.0))) for name in ("vm-a", "vm-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    roll = server.wait()
    assert [host for host, _ in roll.problems] == [1]
    assert "host 1 claimed twice" in roll.problems[0][1]


def test_an_unreachable_coordinator_is_reported_after_the_timeout() -> None:
    probe = call_roll(f"127.0.0.1:{free_port()}", Hello(1, 2, "vm", 1, "run"), 1.0)
    assert not probe.reached and probe.reply is None and probe.attempts > 1
    assert "unreachable for 1 s" in probe.error


# --- consistency.py


def test_the_pod_value_is_the_majority_and_ties_go_to_the_lowest_host() -> None:
    assert consistency.pod_values({0: {"jax": "a"}, 1: {"jax": "b"}, 2: {"jax": "b"}}) == {"jax": "b"}
    assert consistency.pod_values({0: {"jax": "b"}, 1: {"jax": "a"}}) == {"jax": "b"}
    assert consistency.pod_values({3: {"jax": "x"}, 1: {"jax": "y"}}) == {"jax": "y"}


def test_a_differing_host_fails_with_both_values() -> None:
    reports = {h: host_report(h) for h in range(3)}
    reports[2] = host_report(2, facts={**FACTS, "jax": "0.9", "platform": "tpu"})
    cells = consistency.judge(reports)
    assert [h for h, c in cells.items() if c.status == FAIL] == [2]
    assert "jax: 0.9 here vs 0.10.2 on host(s) 0, 1" in cells[2].detail
    assert "platform: tpu here vs cpu" in cells[2].detail and cells[2].value.endswith("(+1)")


def test_a_step_that_does_not_lower_fails_everywhere() -> None:
    facts = {**FACTS, "train step": f"{consistency.STEP_FAILED}: --batch_size=16 is not divisible"}
    cells = consistency.judge({h: host_report(h, facts=facts) for h in range(2)})
    assert {c.status for c in cells.values()} == {FAIL}


def test_the_config_hash_ignores_only_the_process_coordinates() -> None:
    config = TrainConfig()
    assert consistency.config_hash(config) == consistency.config_hash(config.replace(process_id=3))
    assert consistency.config_hash(config) != consistency.config_hash(config.replace(batch_size=32))


# --- devices.py


def test_the_expected_products_are_exact() -> None:
    """The float64 oracle against integer arithmetic, and the exactness argument's bound."""
    a, b = devices.operands(5)
    exact = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(devices.expected_product(5), exact)
    assert np.abs(exact).max() <= devices.SIZE * devices.VALUE_RANGE ** 2


def test_the_device_check_on_8_cpu_devices_names_the_wrong_device() -> None:
    healthy = devices.run_device_check(Fault())
    assert healthy.status == PASS and healthy.metrics["devices"] == 8
    broken = devices.run_device_check(Fault(WRONG_DEVICE_RESULT, 0, 0))
    assert broken.status == FAIL and broken.value == "device 7: 1/65536 wrong"
    assert broken.metrics["error_sum"] == broken.metrics["allreduce_deviation_sum"] == 1.0


def _devices_obs(error: float, deviation: float) -> Observation:
    return Observation("devices", PASS, metrics={"error_sum": error, "error_weighted_sum": error,
                                                 "allreduce_deviation_sum": deviation,
                                                 "allreduce_deviation_weighted_sum": deviation})


def test_a_wrong_all_reduce_is_told_apart_from_a_wrong_device() -> None:
    explained = {0: host_report(0, _devices_obs(0, 1)), 1: host_report(1, _devices_obs(1, 1))}
    assert devices.judge_allreduce(explained) == {}
    moved_wrong = {0: host_report(0, _devices_obs(0, 2)), 1: host_report(1, _devices_obs(0, 0))}
    assert list(devices.judge_allreduce(moved_wrong)) == [0]


def test_other_holders_of_the_accelerator_are_named(tmp_path: Path) -> None:
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    dev.mkdir()
    (dev / "accel0").write_text("")
    for pid, target, command in ((4242, "/dev/accel0", b"python\0stale_job.py"), (os.getpid(), "/dev/accel1", b"me"),
                                 (77, "/tmp/unrelated", b"cat")):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "fd" / "3").symlink_to(target)
        (proc / str(pid) / "cmdline").write_bytes(command)
    assert devices.accelerator_holders(proc) == {"/dev/accel0": ["4242 (python stale_job.py)"]}
    observation = devices.tpu_host_observation(dev, proc)
    assert observation.status == FAIL and "4242 (python stale_job.py)" in observation.detail
    assert devices.tpu_host_observation(tmp_path / "no-dev", proc) is None


# --- interconnect.py


def _timings(arrive: float, done: float) -> tuple[Timing, ...]:
    return tuple(Timing(name, "data", 2, 1 << 16, (arrive,) * 3, (done,) * 3) for name in interconnect.COLLECTIVES)


def test_a_late_host_is_the_straggler_and_the_collective_time_is_its_own() -> None:
    """Host 1 arrives 100 ms late; everyone holds the result 2 ms after it arrives."""
    reports = {0: host_report(0, timings=_timings(0.0, 0.102)), 1: host_report(1, timings=_timings(0.1, 0.102)),
               2: host_report(2, timings=_timings(0.0, 0.102))}
    cells, found = interconnect.judge(reports, factor=3.0)
    assert [h for h, c in cells.items() if c.status == FAIL] == [1]
    assert cells[1].value == "straggler: 102.0 ms vs 2.00 ms"
    m = found[0]
    assert m.time_s == pytest.approx(0.002)
    assert m.latency_s == pytest.approx({0: 0.002, 1: 0.102, 2: 0.002})
    assert m.algbw_gbytes_per_s == pytest.approx(interconnect.algorithm_bytes(m.collective, 1 << 16, 2) / 0.002 / 1e9)


def test_a_pod_of_equal_hosts_has_no_straggler() -> None:
    reports = {h: host_report(h, timings=_timings(0.0001 * h, 0.003)) for h in range(2)}
    cells, _ = interconnect.judge(reports, factor=3.0)
    assert {c.status for c in cells.values()} == {PASS}


def test_published_ici_is_known_for_tpu_kinds_only() -> None:
    assert interconnect.published_ici("TPU v5 lite") == 400.0
    assert interconnect.published_ici("cpu") is None


# --- guard.py


def test_bounded_work_that_hangs_becomes_a_fail() -> None:
    release = threading.Event()
    observation = bounded("storage", lambda: (release.wait(10), Observation("storage", PASS))[1], 0.1)
    release.set()
    assert observation.status == FAIL and "did not finish within 0.1 s" in observation.detail


def test_a_deadline_fires_only_when_the_block_overruns() -> None:
    fired: list[str] = []
    done = threading.Event()

    def expired(row: str) -> None:
        fired.append(row)
        done.set()

    with Deadline("devices", 0.05, expired):
        assert done.wait(30)
    with Deadline("storage", 30, expired):
        pass
    assert fired == ["devices"]


def test_progress_names_the_hosts_furthest_behind() -> None:
    store = FakeKeyValueStore()
    stages = ("consistency", "the exchange after consistency", "devices")
    for host, reached in ((0, 3), (1, 1), (2, 2), (3, 1)):
        progress = Progress("run", host, 4, store)
        for stage in stages[:reached]:
            progress.enter(stage)
    late, where = Progress("run", 0, 4, store).laggards()
    assert late == [1, 3] and where == {0: "devices", 1: "consistency", 2: "the exchange after consistency",
                                        3: "consistency"}
    Progress("run", 4, 5, store).enter("consistency")
    assert Progress("run", 0, 6, store).laggards()[0] == [5]  # host 5 never said where it is


def test_hosts_at_the_same_stage_have_no_laggard() -> None:
    store = FakeKeyValueStore()
    for host in range(3):
        Progress("run", host, 3, store).enter("interconnect")
    assert Progress("run", 0, 3, store).laggards() == ([], {0: "interconnect", 1: "interconnect", 2: "interconnect"})


class BeatingStore:
    """The watchdog's heartbeat keys: host 1 beats on every read, host 2 is silent, host 3 is done."""

    def __init__(self) -> None:
        self.reads = 0

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        self.reads += 1
        return [(f"{prefix}0", str(self.reads)), (f"{prefix}1", str(self.reads)), (f"{prefix}2", "7"),
                (f"{prefix}3", DONE)]


def test_the_silent_hosts_are_those_whose_heartbeat_stands_still() -> None:
    assert silent_hosts(BeatingStore(), 0, 5, watch_s=0) == [2, 4]  # host 4 never beat at all


# --- judge.py and report.py


def test_judged_reports_validate_against_the_schema_and_read_well() -> None:
    received = {0: host_report(0, Observation("rendezvous", PASS, "tcp 1 ms"), Observation("storage", PASS, "w 1 ms")),
                1: host_report(1, Observation("rendezvous", PASS, "tcp 1 ms"),
                               Observation("storage", FAIL, "cannot write", "NotADirectoryError: /x")),
                2: "report from host 2: version must be 1"}
    report = judge(received, context(3), abort=Abort("dry run", "a host stopped responding"),
                   expected_hosts=range(4))
    document = report_files.to_json(report)
    jsonschema.validate(document, PREFLIGHT_SCHEMA)
    assert document["verdict"] == "FAIL" and document["hosts"][3] == {"host": 3, "hostname": None, "pid": None}
    failed = {(f["check"], f["host"]) for f in document["failures"]}
    assert ("storage", 1) in failed and ("dry run", 0) in failed and ("rendezvous", 2) in failed
    assert all(c["status"] == SKIP for c in document["checks"][0]["cells"] if c["host"] == 3)
    page = report_files.markdown(report)
    assert page.startswith("# Preflight: FAIL") and "## What is wrong" in page and "NotADirectoryError" in page
    assert any(line.startswith("storage ") for line in report_files.console_lines(report))


def test_the_never_assembled_report_validates() -> None:
    cells = {0: Observation("rendezvous", PASS, "arrived"), 1: Observation("rendezvous", FAIL, "never arrived")}
    report = rendezvous_failed(context(2), cells, {0: "vm-0"}, {0: 1})
    jsonschema.validate(report_files.to_json(report), PREFLIGHT_SCHEMA)
    assert report.summary() == "FAIL: host 1: rendezvous: never arrived"


def test_collectives_run_only_when_every_host_agrees() -> None:
    agreeing = {h: host_report(h, Observation("consistency", PASS)) for h in range(2)}
    assert same_program(agreeing)
    assert not same_program({**agreeing, 1: host_report(1, facts={**FACTS, "jax": "0.9"})})
    assert not same_program({**agreeing, 1: "report from host 1: empty message"})


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(PREFLIGHT_SCHEMA)
