"""An in-memory GCS emulator on a free loopback port, for tests.

Runs gcp-storage-emulator's request handler in a background thread of the test
process, so nothing outside 127.0.0.1 is ever contacted. Use the `gcs_emulator`
pytest fixture (register it with `pytest_plugins = ["tests.support.gcs_emulator"]`
or import it into a test module), or the `running_gcs_emulator()` context manager:

    with running_gcs_emulator() as emulator:
        subprocess.run(cmd, env={**os.environ, **emulator.env}, timeout=60)

`emulator.env` holds every variable the storage libraries need; see
`harness.runtime.storage.gcs_emulator_env`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage

from harness.runtime.storage import gcs_emulator_env

DEFAULT_BUCKET = "podharness-test"
_HTTP_TIMEOUT_S = 10.0


class _TimedRequestHandler(RequestHandler):
    """The emulator's handler with a socket timeout: its server is
    single-threaded, so one silent client would otherwise stall every other."""

    timeout = 30


class _EmulatorHTTPServer(http.server.HTTPServer):
    """Single-threaded like the emulator's own server (its storage is not
    thread-safe), but with a backlog deep enough for tensorstore's bursts of
    concurrent requests."""

    request_queue_size = 128


@dataclasses.dataclass(frozen=True)
class GcsEmulator:
    """A running emulator: where it listens and how to point clients at it."""

    url: str
    bucket: str
    env: dict[str, str]

    def create_bucket(self, name: str) -> None:
        """Creates a bucket through the JSON API, as a real client would."""
        _request_json(
            "POST",
            f"{self.url}/storage/v1/b?project=test",
            body={"name": name},
        )

    def object_names(self, prefix: str = "") -> list[str]:
        """Lists object names under `prefix`, straight from the emulator."""
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


def _request_json(method: str, url: str, body: object = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:
        payload = response.read()
    return json.loads(payload) if payload else {}


def _wait_until_serving(url: str, timeout_s: float) -> None:
    """Polls the bucket listing until it answers; raises with the last error."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            _request_json("GET", f"{url}/storage/v1/b?project=test")
            return
        except OSError as error:  # URLError and refused connections included.
            last_error = error
            time.sleep(0.05)
    raise TimeoutError(
        f"GCS emulator at {url} did not answer within {timeout_s:.0f}s: {last_error!r}"
    )


@contextlib.contextmanager
def running_gcs_emulator(
    bucket: str = DEFAULT_BUCKET, *, start_timeout_s: float = 10.0
) -> Iterator[GcsEmulator]:
    """Serves an empty in-memory emulator with `bucket` created; stops it on exit.

    The socket is bound to port 0 before the thread starts, so there is no race
    for a "free" port with other tests.
    """
    handler = functools.partial(_TimedRequestHandler, Storage(use_memory_fs=True))
    httpd = _EmulatorHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.1},
        name="gcs-emulator",
        daemon=True,
    )
    thread.start()
    try:
        _wait_until_serving(url, start_timeout_s)
        emulator = GcsEmulator(url=url, bucket=bucket, env=gcs_emulator_env(url))
        emulator.create_bucket(bucket)
        yield emulator
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """One emulator for the whole session; tests keep apart by object prefix."""
    with running_gcs_emulator() as emulator:
        yield emulator
