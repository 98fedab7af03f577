"""The roll call: before jax.distributed starts, every host proves that it reaches the
coordinator address and says who it is, so a host that never comes is named by index.

Why not just `jax.distributed.initialize`: when a process never registers, the others
abort from C++ once `--initialization_timeout` passes (SIGABRT: nothing to catch in
Python, and no word of who was missing). So process 0 first serves this roll call on
the coordinator's own port: every host, process 0 included (through the advertised
address, which proves the address leads back to it), connects with retries until the
timeout, sends a `hello` and waits. Process 0 answers `go` once all N have said hello,
or `abort` naming the missing hosts when the timeout passes first; then it closes the
port (after the clients hang up, so the port is free again at once) and only after
`go` does anyone start JAX, which binds the same port.

Frames are a 4-byte big-endian length and a wire.py message; no wait is unbounded.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import struct
import threading
import time

from harness.hard_examples.codec import PayloadError
from harness.preflight.wire import MAX_MESSAGE_BYTES, Hello, Reply, decode_hello, decode_reply, encode_hello, encode_reply

CONNECT_ATTEMPT_S = 2.0  # one TCP connect attempt
RETRY_S = 0.2  # between attempts
REPLY_MARGIN_S = 10.0  # beyond the timeout, for the coordinator's answer (it started at another time)
HANGUP_WAIT_S = 2.0  # the coordinator waits this long for clients to close first
_HEADER = struct.Struct(">I")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def read_frame(sock: socket.socket, deadline: float) -> bytes:
    """One frame, or TimeoutError/ConnectionError; never more than MAX_MESSAGE_BYTES."""
    header = _read_exactly(sock, _HEADER.size, deadline)
    (length,) = _HEADER.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        raise ConnectionError(f"a {length}-byte message is over the limit of {MAX_MESSAGE_BYTES}")
    return _read_exactly(sock, length, deadline)


def _read_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer in time")
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the connection was closed")
        data += chunk
    return data


@dataclasses.dataclass(frozen=True)
class Probe:
    """One host's side of the roll call: did it reach the coordinator, how fast, and
    what was it told."""

    reached: bool
    attempts: int
    connect_s: float  # the successful connect attempt
    waited_s: float  # from its first attempt to the coordinator's answer
    reply: Reply | None
    error: str = ""


def call_roll(address: str, hello: Hello, timeout_s: float) -> Probe:
    """Connects to the coordinator (retrying until `timeout_s`), says hello, waits for
    the answer (at most `timeout_s + REPLY_MARGIN_S` in all)."""
    host, port = split_address(address)
    started = time.monotonic()
    deadline = started + timeout_s
    attempts, error = 0, ""
    while True:
        attempts += 1
        attempt_started = time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=max(0.05, min(CONNECT_ATTEMPT_S, deadline - attempt_started)))
            break
        except OSError as err:
            error = f"{type(err).__name__}: {err.strerror or err}"
        if time.monotonic() + RETRY_S >= deadline:
            return Probe(False, attempts, 0.0, time.monotonic() - started, None,
                         f"{address} unreachable for {timeout_s:g} s ({attempts} attempts; last: {error})")
        time.sleep(RETRY_S)
    connect_s = time.monotonic() - attempt_started
    with sock:
        try:
            sock.sendall(frame(encode_hello(hello)))
            reply = decode_reply(read_frame(sock, deadline + REPLY_MARGIN_S), source=f"the coordinator at {address}")
        except (OSError, PayloadError) as err:
            return Probe(True, attempts, connect_s, time.monotonic() - started, None,
                         f"reached {address}, but got no answer to the roll call: {type(err).__name__}: {err}")
    return Probe(True, attempts, connect_s, time.monotonic() - started, reply)


@dataclasses.dataclass(frozen=True)
class Arrival:
    hello: Hello
    after_s: float  # seconds after the coordinator opened the roll call


@dataclasses.dataclass
class RollCall:
    """What the coordinator saw: who said hello and when, who never came, what was wrong."""

    num_processes: int
    arrivals: dict[int, Arrival] = dataclasses.field(default_factory=dict)
    problems: list[tuple[int | None, str]] = dataclasses.field(default_factory=list)  # (host it names, why)

    @property
    def missing(self) -> list[int]:
        return [host for host in range(self.num_processes) if host not in self.arrivals]


class RollCallServer:
    """Process 0's side, on a thread: `start()`, then `wait()` for the verdict."""

    def __init__(self, port: int, num_processes: int, timeout_s: float, run_id: str):
        self._num = num_processes
        self._timeout_s = timeout_s
        self._run_id = run_id
        self._listener = _listen(port)
        self._thread = threading.Thread(target=self._serve, name="preflight-roll-call", daemon=True)
        self.roll = RollCall(num_processes)
        self.reply: Reply | None = None

    def start(self) -> RollCallServer:
        self._thread.start()
        return self

    def wait(self) -> RollCall:
        self._thread.join(self._timeout_s + REPLY_MARGIN_S + 2 * HANGUP_WAIT_S)
        return self.roll

    def _serve(self) -> None:
        opened = time.monotonic()
        deadline = opened + self._timeout_s
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        buffers: dict[socket.socket, bytes] = {}
        answered: dict[int, socket.socket] = {}
        try:
            while len(self.roll.arrivals) < self._num and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
                    if key.fileobj is self._listener:
                        conn, _ = self._listener.accept()
                        conn.setblocking(False)
                        buffers[conn] = b""
                        selector.register(conn, selectors.EVENT_READ)
                        continue
                    conn = key.fileobj
                    hello = self._receive(conn, buffers)
                    if hello is None:
                        continue
                    selector.unregister(conn)
                    if self._admit(hello, opened):
                        answered[hello.host] = conn
                    else:
                        conn.close()
            missing = self.roll.missing
            if missing or self.roll.problems:
                why = "; ".join([*(text for _, text in self.roll.problems),
                                 *([f"host(s) {', '.join(map(str, missing))} never arrived within "
                                    f"{self._timeout_s:g} s"] if missing else [])])
                self.reply = Reply("abort", self._run_id, tuple(missing), why)
            else:
                self.reply = Reply("go", self._run_id)
            self._answer(answered, encode_reply(self.reply))
        finally:
            for conn in list(buffers):
                if conn.fileno() >= 0 and conn not in answered.values():
                    conn.close()
            selector.close()
            self._listener.close()

    def _receive(self, conn: socket.socket, buffers: dict[socket.socket, bytes]) -> Hello | None:
        """Reads what is there; a complete hello, or None (incomplete or refused)."""
        try:
            chunk = conn.recv(MAX_MESSAGE_BYTES)
        except OSError:
            chunk = b""
        if not chunk:
            del buffers[conn]
            conn.close()
            return None
        data = buffers[conn] + chunk
        buffers[conn] = data
        if len(data) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack(data[:_HEADER.size])
        if length > MAX_MESSAGE_BYTES or len(data) > _HEADER.size + length:
            self.roll.problems.append((None, f"a peer sent a malformed roll call frame ({length} bytes announced)"))
            return None
        if len(data) < _HEADER.size + length:
            return None
        del buffers[conn]
        try:
            return decode_hello(data[_HEADER.size:], source="a roll call hello")
        except PayloadError as err:
            self.roll.problems.append((None, str(err)))
            return None

    def _admit(self, hello: Hello, opened: float) -> bool:
        if hello.host >= self._num:
            self.roll.problems.append((None, f"{hello.hostname} (pid {hello.pid}) claims process {hello.host} "
                                             f"of a {self._num}-process pod"))
            return False
        if hello.num_processes != self._num:
            self.roll.problems.append((hello.host, f"host {hello.host} ({hello.hostname}) expects "
                                                   f"{hello.num_processes} processes, the coordinator {self._num}"))
        earlier = self.roll.arrivals.get(hello.host)
        if earlier is not None:
            self.roll.problems.append((hello.host, f"host {hello.host} claimed twice: by {earlier.hello.hostname} "
                                                   f"(pid {earlier.hello.pid}) and {hello.hostname} (pid {hello.pid})"))
            return False
        self.roll.arrivals[hello.host] = Arrival(hello, time.monotonic() - opened)
        return True

    def _answer(self, answered: dict[int, socket.socket], reply: bytes) -> None:
        """Sends the verdict, then waits (bounded) for every client to hang up first."""
        for conn in answered.values():
            try:
                conn.setblocking(True)
                conn.settimeout(HANGUP_WAIT_S)
                conn.sendall(frame(reply))
            except OSError:
                continue
        deadline = time.monotonic() + HANGUP_WAIT_S
        for conn in answered.values():
            try:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                while conn.recv(1024):
                    pass
            except OSError:
                pass
            conn.close()


def _listen(port: int) -> socket.socket:
    """A listener on every interface (IPv4 and, where the system has it, IPv6), as JAX's
    coordinator binds `[::]:port`."""
    if socket.has_dualstack_ipv6():
        listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
    else:
        listener = socket.create_server(("", port))
    listener.setblocking(False)
    return listener
