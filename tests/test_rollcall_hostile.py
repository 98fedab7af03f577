"""The roll call ignores what is not a roll call (issue 16, defect 10): a port scanner, a
health check or a host left over from an earlier launch connects to the coordinator's
roll-call port; it is logged in one line and dropped, and the real hosts still meet.
Whatever the coordinator does (never answers, answers junk, hangs up), a host ends
within its bound with one line.

Every fault is a real socket from outside: strays connect to a real RollCallServer,
and to a real 2-process rendezvous (tests/support/rendezvous_host.py: the roll call,
then jax.distributed); fake coordinators are real listening sockets.

    .venv/bin/python -m pytest -q tests/test_rollcall_hostile.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from harness.config import TrainConfig
from harness.errors import UsageError
from harness.preflight.rendezvous import Coordinates, derived_run_id, launcher_run_id
from harness.preflight.rollcall import Probe, RollCallServer, call_roll, frame, read_frame
from harness.preflight.wire import (MAX_KEY_CHARS, MAX_MESSAGE_BYTES, MAX_VALUE_CHARS, Hello, Reply, decode_hello,
                                    decode_reply, encode_hello)
from harness.runtime.messages import VERSION, MessageError
from launch.local import free_port
from tests.support.runs import REPO_ROOT, harness_env, wait_for_output, wait_until

RUN_ID = "local-20261206-000000-abcdef"
STALE_RUN_ID = "local-20261205-235959-012345"
WAIT_S = 30.0  # for anything that should take milliseconds, on a busy machine
JUNK = random.Random(16).randbytes(300)


# --- Strays: (what it sends, the line the coordinator must log for it, as a regex).

def _junk(sock: socket.socket) -> None:
    sock.sendall(frame(JUNK))


def _http(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: coordinator\r\n\r\n")


def _huge(sock: socket.socket) -> None:
    sock.sendall(struct.pack(">I", 1 << 31) + b"x" * 64)


def _other_launch(sock: socket.socket) -> None:
    sock.sendall(frame(encode_hello(Hello(1, 2, "stale-vm", 4242, STALE_RUN_ID))))


def _fragment(sock: socket.socket) -> None:
    sock.sendall(struct.pack(">I", 100) + b"\x85" * 10)
    sock.shutdown(socket.SHUT_WR)


def _silent(sock: socket.socket) -> None:
    pass


STRAYS: dict[str, tuple[Callable[[socket.socket], None], str]] = {
    "junk": (_junk, r"a connection from {peer}: .+: not a roll call hello; dropped"),
    "http": (_http, r"a connection from {peer} announced a 1195725856-byte message "
                    rf"\(the limit is {MAX_MESSAGE_BYTES}\): not a roll call; dropped"),
    "huge": (_huge, rf"a connection from {{peer}} announced a 2147483648-byte message \(the limit is "
                    rf"{MAX_MESSAGE_BYTES}\): not a roll call; dropped"),
    "other launch": (_other_launch, rf"a host of another launch \(run id {STALE_RUN_ID}, claiming host 1, stale-vm "
                                    r"pid 4242\) connected from {peer}, ignored"),
    "fragment": (_fragment, r"a connection from {peer} closed after sending 14 bytes but no whole hello; dropped"),
    "silent": (_silent, r"a connection from {peer} sent nothing before the roll call ended; dropped"),
}
AT_ONCE = [kind for kind in STRAYS if kind != "silent"]  # logged as soon as they are read


def expected_line(kind: str, sock: socket.socket) -> re.Pattern:
    host, port = sock.getsockname()[:2]
    return re.compile(STRAYS[kind][1].replace("{peer}", re.escape(f"{host}:{port}")))


def connect(port: int) -> socket.socket:
    """A stray's connection, retried until the port listens."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)


def call_all(port: int, num: int, timeout_s: float) -> dict[int, Probe]:
    """Every host's call_roll, each on its own thread (bounded joins)."""
    probes: dict[int, Probe] = {}

    def call(host: int) -> None:
        probes[host] = call_roll(f"127.0.0.1:{port}", Hello(host, num, f"vm-{host}", 1000 + host, RUN_ID), timeout_s)

    threads = [threading.Thread(target=call, args=(host,)) for host in range(num)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s + 30)
    return probes


# --- One stray at a real RollCallServer.

@pytest.mark.parametrize("kind", list(STRAYS))
def test_a_stray_is_logged_and_dropped_and_the_hosts_still_meet(kind: str) -> None:
    port = free_port()
    lines: list[str] = []
    server = RollCallServer(port, 2, 20.0, RUN_ID, log=lines.append).start()
    with connect(port) as stray:
        STRAYS[kind][0](stray)
        if kind in AT_ONCE:
            wait_until(lambda: lines, f"the coordinator's line for the {kind} stray", timeout=WAIT_S, poll_s=0.01)
        probes = call_all(port, 2, 20.0)
        roll = server.wait()
        if kind == "other launch":  # told why, in the roll call's own terms
            refusal = decode_reply(read_frame(stray, time.monotonic() + WAIT_S), source="test")
            assert refusal.kind == "abort" and refusal.reason.startswith(
                f"turned away: this host carries run id {STALE_RUN_ID}, the coordinator's launch has run id {RUN_ID}")
        assert len(lines) == 1 and expected_line(kind, stray).fullmatch(lines[0]), lines
    assert {h: (p.reply.kind, p.reply.run_id) for h, p in probes.items() if p.reply} == {0: ("go", RUN_ID),
                                                                                       1: ("go", RUN_ID)}
    assert sorted(roll.arrivals) == [0, 1] and roll.problems == [] and roll.ignored == lines
    assert roll.arrivals[1].hello.hostname == "vm-1"


def test_a_stale_host_that_claims_a_missing_host_is_named_in_the_abort() -> None:
    """The real host 1 never comes; the abort says who tried to take its place."""
    port = free_port()
    lines: list[str] = []
    server = RollCallServer(port, 2, 1.0, RUN_ID, log=lines.append).start()
    with connect(port) as stray:
        host, stray_port = stray.getsockname()[:2]
        _other_launch(stray)
        probe = call_roll(f"127.0.0.1:{port}", Hello(0, 2, "vm-0", 1000, RUN_ID), 1.0)
        server.wait()
    assert probe.reply is not None and probe.reply.kind == "abort" and probe.reply.missing == (1,)
    assert probe.reply.reason == (f"host(s) 1 never arrived within 1 s (host 1 was claimed by a host of another "
                                  f"launch from {host}:{stray_port})")


def test_the_strays_past_the_limit_go_unlogged_but_not_unnoticed() -> None:
    port = free_port()
    lines: list[str] = []
    server = RollCallServer(port, 1, 20.0, RUN_ID, log=lines.append).start()
    for _ in range(25):
        with connect(port) as stray:
            _http(stray)
    wait_until(lambda: len(lines) == 21, "21 lines for 25 strays", timeout=WAIT_S, poll_s=0.01)
    probes = call_all(port, 1, 20.0)
    roll = server.wait()
    assert probes[0].reply is not None and probes[0].reply.kind == "go"
    assert len(roll.ignored) == 25 and lines[-1] == ("more than 20 connections were not roll calls of this launch; "
                                                     "the rest are dropped without a line")


# --- Every stray at once, at a real 2-process rendezvous (roll call, then jax.distributed).

def test_strays_at_a_real_rendezvous_are_logged_and_the_two_hosts_still_meet(tmp_path: Path) -> None:
    port = free_port()
    logs = [tmp_path / f"host-{i}.log" for i in range(2)]
    hosts: list[subprocess.Popen] = []
    strays: dict[str, socket.socket] = {}
    patterns: dict[str, re.Pattern] = {}

    def start(host: int) -> subprocess.Popen:
        env = harness_env(HARNESS_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", HARNESS_NUM_PROCESSES="2",
                          HARNESS_PROCESS_ID=str(host), HARNESS_RUN_ID=RUN_ID)
        with logs[host].open("wb") as log:
            return subprocess.Popen([sys.executable, "-m", "tests.support.rendezvous_host",
                                     "--initialization_timeout", "90"], cwd=REPO_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)

    try:
        hosts.append(start(0))
        health_check = connect(port)  # the way a load balancer looks: connect, hang up
        health_check.close()
        for kind, (act, _) in STRAYS.items():
            strays[kind] = connect(port)
            patterns[kind] = expected_line(kind, strays[kind])
            act(strays[kind])
        for kind in AT_ONCE:
            wait_for_output(logs[0], patterns[kind].pattern, hosts[0], timeout=WAIT_S)
        hosts.append(start(1))  # only now: every stray came first
        codes = [host.wait(timeout=120) for host in hosts]
    finally:
        for sock in strays.values():
            sock.close()
        for host in hosts:
            if host.poll() is None:
                host.kill()
                host.wait(timeout=30)
    printed = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], printed
    for text in printed:
        assert re.search(rf"^JOINED {RUN_ID}: PASS tcp ", text, re.MULTILINE), text
    roll_lines = [line for line in printed[0].splitlines() if line.startswith("harness-preflight: host 0: roll call: ")]
    assert len(roll_lines) == len(STRAYS) + 1, printed[0]
    for kind, pattern in patterns.items():
        assert any(pattern.fullmatch(line.removeprefix("harness-preflight: host 0: roll call: "))
                   for line in roll_lines), (kind, roll_lines)


# --- A host whose coordinator misbehaves ends within its bound, with one line.

@contextlib.contextmanager
def coordinator(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A real listening socket that accepts every connection and `answer`s it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            answer(conn)

    thread = threading.Thread(target=serve, name="fake-coordinator")
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(WAIT_S)
        for conn in held:
            conn.close()
        listener.close()


COORDINATORS: dict[str, tuple[Callable[[socket.socket], None], str]] = {
    "never answers": (lambda conn: None, "reached 127.0.0.1:{port}, but got no answer to the roll call: "
                                         "TimeoutError: no answer in time"),
    "answers junk": (lambda conn: conn.sendall(frame(JUNK)), "reached 127.0.0.1:{port}, but got no answer to the "
                                                             "roll call: MessageError: the coordinator at 127.0.0.1:"
                                                             "{port}: "),
    "announces a huge answer": (lambda conn: conn.sendall(struct.pack(">I", 1 << 31)),
                                "reached 127.0.0.1:{port}, but got no answer to the roll call: ConnectionError: a "
                                "2147483648-byte message is over the limit of 65536"),
    "hangs up": (lambda conn: conn.close(), "127.0.0.1:{port} reached but unanswered for 0.5 s ("),
}


@pytest.mark.parametrize("kind", list(COORDINATORS))
def test_a_host_ends_within_its_bound_whatever_the_coordinator_does(kind: str) -> None:
    answer, message = COORDINATORS[kind]
    timeout_s, margin_s = 0.5, 1.0
    found: list[Probe] = []
    with coordinator(answer) as port:
        thread = threading.Thread(target=lambda: found.append(call_roll(
            f"127.0.0.1:{port}", Hello(1, 2, "vm-1", 1001, RUN_ID), timeout_s, reply_margin_s=margin_s)))
        thread.start()
        thread.join(timeout_s + margin_s + WAIT_S)
        assert not thread.is_alive(), f"call_roll still waits {timeout_s + margin_s + WAIT_S:g} s later"
    probe = found[0]
    assert probe.reached and probe.reply is None
    assert probe.error.startswith(message.format(port=port)) and "\n" not in probe.error, probe.error
    if kind == "never answers":  # it waited for the answer as long as it should, no longer than the join allowed
        assert probe.waited_s >= timeout_s + margin_s
    if kind == "hangs up":
        assert probe.attempts > 1 and probe.error.endswith(
            "last: the coordinator closed the connection without answering)"), probe.error


def test_a_preflight_host_whose_coordinator_answers_junk_exits_1_with_one_line(tmp_path: Path) -> None:
    with coordinator(COORDINATORS["answers junk"][0]) as port:
        env = harness_env(HARNESS_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", HARNESS_NUM_PROCESSES="2",
                          HARNESS_PROCESS_ID="1", HARNESS_RUN_ID=RUN_ID)
        result = subprocess.run([sys.executable, "-m", "harness.preflight", "--checks", "consistency",
                                 "--initialization_timeout", "5", "--run_dir", str(tmp_path / "run"),
                                 "--checkpoint_dir", str(tmp_path / "ckpt")],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("harness-")]
    assert len(said) == 1 and said[0].startswith(
        f"harness-train: error: host 1: host(s) 0 stopped responding: the coordinator did not answer the roll call: "
        f"reached 127.0.0.1:{port}, but got no answer to the roll call: MessageError: "), result.stderr
    assert "harness-preflight: FAIL: host 0: rendezvous: no answer to host 1" in result.stdout, result.stdout
    assert not (tmp_path / "run").exists()


# --- Hostile hello and reply frames: well-formed msgpack, wrong in every other way.

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                     st.floats(allow_nan=True), st.text(max_size=80), st.binary(max_size=16))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
_HELLO_KEYS = ("host", "num_processes", "hostname", "pid", "run_id")
_REPLY_KEYS = ("kind", "run_id", "missing", "reason")
_KINDS = ("hello", "reply", "host_report")


def _near_valid(keys: tuple[str, ...]) -> st.SearchStrategy[list]:
    """[version, kind, body] frames, the version mostly right, the kind any of ours, the
    body with mostly the right keys (some dropped, some extra) and right or wrong values."""
    field = st.one_of(_VALUES, st.integers(min_value=0, max_value=2**63 - 1), st.text(max_size=300),
                      st.sampled_from(["go", "abort"]))
    base = st.fixed_dictionaries({key: field for key in keys}, optional={"extra": _VALUES}).map(dict)
    version = st.just(VERSION) | _SCALARS
    return st.tuples(version, st.sampled_from(_KINDS), base, st.sets(st.sampled_from(keys), max_size=2)).map(
        lambda t: [t[0], t[1], {k: v for k, v in t[2].items() if k not in t[3]}])


@settings(max_examples=200, deadline=None)
@given(_near_valid(_HELLO_KEYS))
def test_a_hostile_hello_decodes_exactly_or_is_refused(frame: list) -> None:
    data = msgpack.packb(frame, use_bin_type=True)
    try:
        hello = decode_hello(data, source="fuzz")
    except MessageError:
        return
    assert type(hello.host) is int and type(hello.num_processes) is int and type(hello.pid) is int
    assert min(hello.host, hello.num_processes, hello.pid) >= 0
    assert type(hello.hostname) is str and len(hello.hostname) <= MAX_VALUE_CHARS
    assert type(hello.run_id) is str and len(hello.run_id) <= MAX_KEY_CHARS
    assert frame[:2] == [VERSION, "hello"] and set(frame[2]) == set(_HELLO_KEYS)


@settings(max_examples=200, deadline=None)
@given(_near_valid(_REPLY_KEYS))
def test_a_hostile_reply_decodes_exactly_or_is_refused(frame: list) -> None:
    data = msgpack.packb(frame, use_bin_type=True)
    try:
        reply = decode_reply(data, source="fuzz")
    except MessageError:
        return
    assert isinstance(reply, Reply) and reply.kind in ("go", "abort")
    assert type(reply.run_id) is str and type(reply.reason) is str
    assert all(type(host) is int and host >= 0 for host in reply.missing)
    assert frame[:2] == [VERSION, "reply"] and set(frame[2]) == set(_REPLY_KEYS)


# --- The run id.

def test_the_run_id_is_the_launchers_or_one_every_host_of_the_launch_derives_alike(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config, pod = TrainConfig(), Coordinates("10.0.0.2:8476", 4, 0)
    host_3 = derived_run_id(config.replace(process_id=3), dataclasses.replace(pod, process_id=3))
    assert derived_run_id(config, pod) == host_3 and host_3.startswith("derived-")
    assert derived_run_id(config.replace(batch_size=64), pod) != host_3
    assert derived_run_id(config, dataclasses.replace(pod, address="10.0.0.3:8476")) != host_3
    monkeypatch.delenv("HARNESS_RUN_ID", raising=False)
    assert launcher_run_id() is None
    monkeypatch.setenv("HARNESS_RUN_ID", "20261206-010203-abcdef")
    assert launcher_run_id() == "20261206-010203-abcdef"
    monkeypatch.setenv("HARNESS_RUN_ID", "../x")
    with pytest.raises(UsageError, match=r"HARNESS_RUN_ID='\.\./x' is not a run id"):
        launcher_run_id()


def test_a_bad_run_id_is_one_line_and_exit_2_before_anything_starts(tmp_path: Path) -> None:
    env = harness_env(HARNESS_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", HARNESS_NUM_PROCESSES="2",
                      HARNESS_PROCESS_ID="0", HARNESS_RUN_ID="run id with spaces")
    result = subprocess.run([sys.executable, "-m", "harness.preflight", "--run_dir", str(tmp_path / "run"),
                             "--checkpoint_dir", str(tmp_path / "ckpt")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "harness-preflight: error: HARNESS_RUN_ID='run id with spaces' is not a run id (1 to 64 letters, digits, "
        "'.', '_' or '-', starting with a letter or digit)"]
    assert list(tmp_path.iterdir()) == []
