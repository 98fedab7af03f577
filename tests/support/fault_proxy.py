"""A fault-injecting HTTP reverse proxy for storage tests.

Sits on a free loopback port in front of the GCS emulator and forwards every
request, except those a rule picks to fail (or to slow down: `Fault.DELAY`, a rule
that can pick one host's objects by name). Only fault-injection tests use it;
every other test talks to the emulator directly. Faults are deterministic: a rule
fails the next N matching requests, or every k-th one, so a test can assert
exactly how many were injected. Point clients at `proxy.url` instead of the
emulator's url (`harness.runtime.storage.gcs_emulator_env(proxy.url)`).

    with FaultProxy(emulator.url) as proxy:
        proxy.add_rule(Fault.UNAVAILABLE, count=3, method="POST", path="/upload/")
        ...
        assert proxy.injected() == 3

Request bodies are read in full (Content-Length or chunked) and forwarded with
a Content-Length; responses likewise. That covers the JSON API, media,
multipart and resumable uploads, ranged downloads and keep-alive connections
of gcsfs (aiohttp), google-cloud-storage (requests) and tensorstore (curl).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import http.client
import http.server
import json
import socket
import threading
import time
import urllib.parse

_HOP_BY_HOP = frozenset({
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
})


class Fault(enum.Enum):
    """What a matching request gets instead of a normal answer."""

    UNAVAILABLE = "503"
    """Answer 503 without forwarding: the request never reached storage."""
    FORBIDDEN = "403"
    """Answer 403 without forwarding: permission denied (clients do not retry it)."""
    DROP = "drop"
    """Close the connection without answering, before forwarding."""
    DROP_AFTER_FORWARD = "drop_after_forward"
    """Forward, then close without answering: storage applied the request but
    the client never learns it (the nastiest case for retries)."""
    DELAY = "delay"
    """Wait the rule's `delay_s`, then forward and answer normally: slow storage."""


@dataclasses.dataclass
class FaultRule:
    """Fails requests whose method equals `method` (if set), whose path
    contains `path` and which mention `mentions` (if set) in their path or
    body (an upload names its object in the body): the next `count` of them,
    or with `every` > 0 each `every`-th match (indefinitely unless `count`
    also limits it)."""

    fault: Fault
    method: str | None = None
    path: str = ""
    count: int | None = 1
    every: int = 0
    mentions: str = ""
    delay_s: float = 0.0
    matched: int = 0
    injected: int = 0

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        """True for a request this rule still wants to see."""
        spent = self.count is not None and self.injected >= self.count
        method_ok = self.method is None or method == self.method
        mentioned = not self.mentions or self.mentions in path or self.mentions.encode() in body
        return not spent and method_ok and self.path in path and mentioned

    def take(self) -> bool:
        """Counts one matching request; True if it is to fail."""
        self.matched += 1
        if self.every and self.matched % self.every:
            return False
        self.injected += 1
        return True


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as the proxy saw it; `status` is None when dropped unanswered."""

    method: str
    path: str
    user_agent: str
    status: int | None
    fault: Fault | None


class FaultProxy:
    """Threaded reverse proxy to `upstream_url` with injectable faults.

    Every socket has a timeout (`timeout_s`), so a stuck client or upstream
    frees its thread instead of hanging the test.
    """

    def __init__(self, upstream_url: str, *, timeout_s: float = 30.0) -> None:
        upstream = urllib.parse.urlsplit(upstream_url)
        if upstream.scheme != "http" or not upstream.hostname or not upstream.port:
            raise ValueError(f"expected http://host:port, got {upstream_url!r}")
        self._upstream = (upstream.hostname, upstream.port)
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._records: list[RequestRecord] = []
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler, self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="fault-proxy",
            daemon=True,
        )
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add_rule(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path: str = "",
        count: int | None = 1,
        every: int = 0,
        mentions: str = "",
        delay_s: float = 0.0,
    ) -> FaultRule:
        """Adds a rule; the first unspent rule that matches a request decides it."""
        if (fault is Fault.DELAY) != (delay_s > 0):
            raise ValueError("delay_s > 0 goes with Fault.DELAY, and only with it")
        rule = FaultRule(fault, method=method, path=path, count=count, every=every, mentions=mentions,
                         delay_s=delay_s)
        with self._lock:
            self._rules.append(rule)
        return rule

    def records(self) -> list[RequestRecord]:
        """Every request answered (or dropped) so far, in that order."""
        with self._lock:
            return list(self._records)

    def injected(self, fault: Fault | None = None) -> int:
        """How many faults (of one kind, or all) were injected so far."""
        with self._lock:
            return sum(
                1
                for r in self._records
                if r.fault is not None and (fault is None or r.fault == fault)
            )

    def fault_counts(self) -> dict[str, int]:
        """Injected faults by kind (`Fault.value`), for one-line assertions."""
        with self._lock:
            return dict(
                collections.Counter(r.fault.value for r in self._records if r.fault)
            )

    def _choose_rule(self, method: str, path: str, body: bytes) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, body):
                    return rule if rule.take() else None
        return None

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=self._timeout_s)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body if body else None)
            response = connection.getresponse()
            payload = response.read() if method != "HEAD" else b""
            return response.status, response.reason, response.getheaders(), payload
        finally:
            connection.close()


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, proxy: FaultProxy):
        super().__init__(address, handler)
        self.proxy = proxy


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def setup(self) -> None:
        self.timeout = self.server.proxy._timeout_s
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:
            pass  # The client hung up: on an idle keep-alive connection, or
            # it cancelled a request (gcsfs races two lookups per `info`).

    def log_message(self, format: str, *args: object) -> None:
        del format, args  # The request log is kept in FaultProxy.records().

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # Trailer headers: read and ignored.
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        """Forwards one request, or fails it; records it before the client
        can see the outcome, so counts are settled when a client call returns."""
        proxy = self.server.proxy
        method, path = self.command, self.path
        user_agent = self.headers.get("User-Agent", "")
        body = self._read_body()
        rule = proxy._choose_rule(method, path, body)
        fault = rule.fault if rule else None
        if fault is Fault.DELAY:
            time.sleep(rule.delay_s)
        if fault in (Fault.UNAVAILABLE, Fault.FORBIDDEN):
            status = int(fault.value)
            proxy._record(RequestRecord(method, path, user_agent, status, fault))
            self._send(status, http.HTTPStatus(status).phrase, [], _error_body(status), method)
            return
        if fault is Fault.DROP:
            proxy._record(RequestRecord(method, path, user_agent, None, fault))
            self._drop()
            return
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        try:
            status, reason, response_headers, payload = proxy._forward(
                method, path, headers, body
            )
        except OSError:
            proxy._record(RequestRecord(method, path, user_agent, 502, None))
            self._send(502, "Bad Gateway", [], _error_body(502), method)
            return
        proxy._record(RequestRecord(method, path, user_agent, status, fault))
        if fault is Fault.DROP_AFTER_FORWARD:
            self._drop()
            return
        response_headers = [
            (k, v) for k, v in response_headers if k.lower() not in _HOP_BY_HOP
        ]
        self._send(status, reason, response_headers, payload, method)

    def _send(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        payload: bytes,
        method: str,
    ) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if status >= 200 and status not in (204, 304):
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def _error_body(code: int) -> bytes:
    message = f"injected by fault proxy ({code})"
    return json.dumps({"error": {"code": code, "message": message}}).encode()
