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

Anything can connect to that port: a port scanner, a health check, a host left over
from an earlier launch. A connection that is not a roll call of this launch (junk, an
oversized frame, silence, a hello carrying another launch's run id) is logged in one
line and dropped; a host of another launch is told so, and never takes a real host's
place. Frames are a 4-byte big-endian length and a wire.py message; no wait is
unbounded, on either side, whatever the other side does.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable

from harness.preflight.wire import (MAX_MESSAGE_BYTES, MAX_TEXT_CHARS, Hello, Reply, decode_hello, decode_reply,
                                   encode_hello, encode_reply)
from harness.runtime.messages import MessageError

CONNECT_ATTEMPT_S = 2.0  # one TCP connect attempt
RETRY_S = 0.2  # between attempts
REPLY_MARGIN_S = 10.0  # beyond the timeout, for the coordinator's answer (it started at another time)
HANGUP_WAIT_S = 2.0  # the coordinator waits this long for clients to close first
HELLO_WAIT_S = 10.0  # a connection that has not said hello by then is dropped
SPARE_CONNECTIONS = 64  # connections still to say hello, beyond one per host; the oldest go first
LOGGED_STRAYS = 20  # then one line saying the rest go unlogged
_HEADER = struct.Struct(">I")


class Hangup(ConnectionError):
    """The other side closed the connection before sending anything."""


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def read_frame(sock: socket.socket, deadline: float) -> bytes:
    """One frame, or TimeoutError/ConnectionError (Hangup if nothing came at all);
    never more than MAX_MESSAGE_BYTES."""
    header = _read_exactly(sock, _HEADER.size, deadline, first=True)
    (length,) = _HEADER.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        raise ConnectionError(f"a {length}-byte message is over the limit of {MAX_MESSAGE_BYTES}")
    return _read_exactly(sock, length, deadline)


def _read_exactly(sock: socket.socket, size: int, deadline: float, *, first: bool = False) -> bytes:
    data = b""
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer in time")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            raise TimeoutError("no answer in time") from None
        if not chunk:
            raise Hangup("the connection was closed") if first and not data else ConnectionError(
                "the connection was closed mid-message")
        data += chunk
    return data


@dataclasses.dataclass(frozen=True)
class Probe:
    """One host's side of the roll call: did it reach the coordinator, how fast, and
    what was it told."""

    reached: bool
    attempts: int
    connect_s: float  # the last successful connect attempt
    waited_s: float  # from its first attempt to the coordinator's answer
    reply: Reply | None
    error: str = ""


def call_roll(address: str, hello: Hello, timeout_s: float, *, reply_margin_s: float = REPLY_MARGIN_S) -> Probe:
    """Connects to the coordinator (retrying until `timeout_s`), says hello, waits for
    the answer: at most `timeout_s + reply_margin_s` in all, whatever the coordinator
    does. A coordinator that hangs up (or resets) without a word is tried again until
    `timeout_s`: it may be about to listen, or has just dropped what it took for a stray.
    Silence, junk or an oversized answer end it at once, in one line."""
    host, port = split_address(address)
    started = time.monotonic()
    deadline = started + timeout_s
    attempts, connect_s, reached, error = 0, 0.0, False, ""
    while True:
        attempts += 1
        attempt_started = time.monotonic()
        try:
            sock = socket.create_connection((host, port),
                                            timeout=max(0.05, min(CONNECT_ATTEMPT_S, deadline - attempt_started)))
        except OSError as err:
            error = f"{type(err).__name__}: {err.strerror or err}"
        else:
            reached, connect_s = True, time.monotonic() - attempt_started
            with sock:
                try:
                    sock.sendall(frame(encode_hello(hello)))
                    reply = decode_reply(read_frame(sock, deadline + reply_margin_s),
                                         source=f"the coordinator at {address}")
                    return Probe(True, attempts, connect_s, time.monotonic() - started, reply)
                except (Hangup, ConnectionResetError, BrokenPipeError):
                    error = "the coordinator closed the connection without answering"
                except (OSError, MessageError) as err:
                    return Probe(True, attempts, connect_s, time.monotonic() - started, None,
                                 f"reached {address}, but got no answer to the roll call: {type(err).__name__}: {err}")
        if time.monotonic() + RETRY_S >= deadline:
            verb = "reached but unanswered" if reached else "unreachable"
            return Probe(reached, attempts, connect_s, time.monotonic() - started, None,
                         f"{address} {verb} for {timeout_s:g} s ({attempts} attempts; last: {error})")
        time.sleep(RETRY_S)


@dataclasses.dataclass(frozen=True)
class Arrival:
    hello: Hello
    after_s: float  # seconds after the coordinator opened the roll call


@dataclasses.dataclass
class RollCall:
    """What the coordinator saw: who said hello and when, who never came, what was
    wrong with this launch's hosts, and what connected that was not one of them."""

    num_processes: int
    arrivals: dict[int, Arrival] = dataclasses.field(default_factory=dict)
    problems: list[tuple[int | None, str]] = dataclasses.field(default_factory=list)  # (host it names, why)
    ignored: list[str] = dataclasses.field(default_factory=list)  # strays, one line each

    @property
    def missing(self) -> list[int]:
        return [host for host in range(self.num_processes) if host not in self.arrivals]


@dataclasses.dataclass
class _Pending:
    """A connection that has not said hello yet."""

    peer: str
    opened: float
    data: bytes = b""


class RollCallServer:
    """Process 0's side, on a thread: `start()`, then `wait()` for the verdict.

    `run_id` is the launch's: a hello must carry it. `pod_run_id` (default: the same)
    is what `go` hands every host, to name this preflight's scratch files. `log`
    receives one line per connection dropped."""

    def __init__(self, port: int, num_processes: int, timeout_s: float, run_id: str, *,
                 log: Callable[[str], None], pod_run_id: str | None = None):
        self._num = num_processes
        self._timeout_s = timeout_s
        self._run_id = run_id
        self._pod_run_id = pod_run_id or run_id
        self._log = log
        self._listener = _listen(port)
        self._thread = threading.Thread(target=self._serve, name="preflight-roll-call", daemon=True)
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, _Pending] = {}
        self._answered: dict[int, socket.socket] = {}
        self._claimed_by_strays: dict[int, str] = {}
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
        self._selector.register(self._listener, selectors.EVENT_READ)
        try:
            while len(self.roll.arrivals) < self._num and time.monotonic() < deadline:
                for key, _ in self._selector.select(timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj in self._pending:
                        self._read(key.fileobj, opened)
                self._drop_silent(time.monotonic() - HELLO_WAIT_S)
            self.reply = self._verdict()
            for conn, pending in list(self._pending.items()):
                self._drop(conn, f"a connection from {pending.peer} sent {_said(pending)} before the roll call "
                                 f"ended; dropped")
            self._answer(encode_reply(self.reply))
        except Exception as err:  # a bug here must not leave every host waiting: they are told by the hangup
            self.roll.problems.append((None, f"the roll call server failed: {type(err).__name__}: {err}"))
        finally:
            for conn in [*self._pending, *self._answered.values()]:
                conn.close()
            self._selector.close()
            self._listener.close()

    def _verdict(self) -> Reply:
        missing = self.roll.missing
        if not missing and not self.roll.problems:
            return Reply("go", self._pod_run_id, (), "")
        never = []
        if missing:
            strays = [f"host {h} was claimed by {self._claimed_by_strays[h]}" for h in missing
                      if h in self._claimed_by_strays]
            never = [f"host(s) {', '.join(map(str, missing))} never arrived within {self._timeout_s:g} s"
                     + (f" ({'; '.join(strays)})" if strays else "")]
        why = "; ".join([*(text for _, text in self.roll.problems), *never])
        return Reply("abort", self._pod_run_id, tuple(missing), why)

    def _accept(self) -> None:
        try:
            conn, address = self._listener.accept()
        except OSError:  # gone before we took it
            return
        if len(self._pending) >= self._num + SPARE_CONNECTIONS:
            oldest = min(self._pending, key=lambda c: self._pending[c].opened)
            self._drop(oldest, f"a connection from {self._pending[oldest].peer} sent {_said(self._pending[oldest])} "
                               f"while {len(self._pending)} connections waited; dropped")
        conn.setblocking(False)
        self._pending[conn] = _Pending(_peer(address), time.monotonic())
        self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket, opened: float) -> None:
        """Reads what is there; acts once a whole frame has come, or drops what is not a roll call."""
        pending = self._pending[conn]
        try:
            chunk = conn.recv(_HEADER.size + MAX_MESSAGE_BYTES)
        except BlockingIOError:
            return
        except OSError as err:
            self._drop(conn, f"a connection from {pending.peer} failed ({type(err).__name__}); dropped")
            return
        if not chunk:
            self._drop(conn, f"a connection from {pending.peer} closed after sending {_said(pending)}; dropped")
            return
        pending.data += chunk
        if len(pending.data) < _HEADER.size:
            return
        (length,) = _HEADER.unpack(pending.data[:_HEADER.size])
        if length > MAX_MESSAGE_BYTES:
            self._drop(conn, f"a connection from {pending.peer} announced a {length}-byte message "
                             f"(the limit is {MAX_MESSAGE_BYTES}): not a roll call; dropped")
            return
        if len(pending.data) > _HEADER.size + length:
            self._drop(conn, f"a connection from {pending.peer} sent more than one message: not a roll call; "
                             f"dropped")
            return
        if len(pending.data) < _HEADER.size + length:
            return
        try:
            hello = decode_hello(pending.data[_HEADER.size:], source=f"a connection from {pending.peer}")
        except MessageError as err:  # maybe a host of another harness version: it is told why
            self._drop(conn, f"{err}: not a roll call hello; dropped", tell=f"not a roll call hello: {err}")
            return
        if hello.run_id != self._run_id:
            self._claimed_by_strays.setdefault(hello.host, f"a host of another launch from {pending.peer}")
            self._drop(conn, f"a host of another launch (run id {hello.run_id}, claiming host {hello.host}, "
                             f"{hello.hostname} pid {hello.pid}) connected from {pending.peer}, ignored",
                       tell=f"turned away: this host carries run id {hello.run_id}, the coordinator's launch has "
                            f"run id {self._run_id} (a host of another launch)")
            return
        self._selector.unregister(conn)
        del self._pending[conn]
        refused = self._admit(hello, opened)
        if refused:
            _tell(conn, Reply("abort", self._pod_run_id, (), refused))
            conn.close()
        else:
            self._answered[hello.host] = conn

    def _admit(self, hello: Hello, opened: float) -> str:
        """Takes a hello of this launch; or records the problem and returns it (the
        host's index is not one of the pod's, or is claimed already)."""
        if hello.host >= self._num:
            self.roll.problems.append((None, f"{hello.hostname} (pid {hello.pid}) claims process {hello.host} "
                                             f"of a {self._num}-process pod"))
            return self.roll.problems[-1][1]
        if hello.num_processes != self._num:
            self.roll.problems.append((hello.host, f"host {hello.host} ({hello.hostname}) expects "
                                                   f"{hello.num_processes} processes, the coordinator {self._num}"))
        earlier = self.roll.arrivals.get(hello.host)
        if earlier is not None:
            self.roll.problems.append((hello.host, f"host {hello.host} claimed twice: by {earlier.hello.hostname} "
                                                   f"(pid {earlier.hello.pid}) and {hello.hostname} (pid {hello.pid})"))
            return self.roll.problems[-1][1]
        self.roll.arrivals[hello.host] = Arrival(hello, time.monotonic() - opened)
        return ""

    def _drop_silent(self, opened_before: float) -> None:
        for conn, pending in list(self._pending.items()):
            if pending.opened < opened_before:
                self._drop(conn, f"a connection from {pending.peer} sent {_said(pending)} in {HELLO_WAIT_S:g} s; "
                                 f"dropped")

    def _drop(self, conn: socket.socket, line: str, *, tell: str = "") -> None:
        """Closes a connection that is not a roll call of this launch, logging `line`;
        `tell`: why, for the other side, as an `abort`."""
        self._selector.unregister(conn)
        del self._pending[conn]
        if tell:
            _tell(conn, Reply("abort", self._pod_run_id, (), tell[:MAX_TEXT_CHARS]))
        conn.close()
        self._say(line)

    def _say(self, line: str) -> None:
        self.roll.ignored.append(line)
        if len(self.roll.ignored) <= LOGGED_STRAYS:
            self._log(line)
        elif len(self.roll.ignored) == LOGGED_STRAYS + 1:
            self._log(f"more than {LOGGED_STRAYS} connections were not roll calls of this launch; "
                      f"the rest are dropped without a line")

    def _answer(self, reply: bytes) -> None:
        """Sends the verdict, then waits (bounded) for every client to hang up first."""
        for conn in self._answered.values():
            try:
                conn.setblocking(True)
                conn.settimeout(HANGUP_WAIT_S)
                conn.sendall(frame(reply))
            except OSError:
                continue
        deadline = time.monotonic() + HANGUP_WAIT_S
        for conn in self._answered.values():
            try:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                while conn.recv(1024):
                    pass
            except OSError:
                pass


def _tell(conn: socket.socket, reply: Reply) -> None:
    """Best effort, never waiting: a few hundred bytes fit in any socket buffer."""
    try:
        conn.send(frame(encode_reply(reply)))
    except OSError:
        pass


def _said(pending: _Pending) -> str:
    return f"{len(pending.data)} bytes but no whole hello" if pending.data else "nothing"


def _peer(address: tuple) -> str:
    """`127.0.0.1:port` (also for an IPv4 peer of a dual-stack listener), `[v6]:port`."""
    host, port = address[0], address[1]
    if host.startswith("::ffff:"):
        host = host.removeprefix("::ffff:")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(port: int) -> socket.socket:
    """A listener on every interface (IPv4 and, where the system has it, IPv6), as JAX's
    coordinator binds `[::]:port`."""
    if socket.has_dualstack_ipv6():
        listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
    else:
        listener = socket.create_server(("", port))
    listener.setblocking(False)
    return listener
