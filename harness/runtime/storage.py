"""Storage concerns of the harness: gs:// paths, a GCS emulator, retries, the start-up
write check.

Checkpoints go through orbax to a local directory or to gs://bucket/path. Three
libraries touch GCS on that path and each retries on its own:

- tensorstore writes and reads the array data. Its GCS driver retries 5xx,
  429 and dropped connections with exponential backoff, configured by the
  `gcs_request_retries` resource of its Context (defaults: 32 retries, 1 s
  doubling to 32 s). orbax 0.12.8 builds that Context itself with no hook to
  pass one in, so `configure_orbax_gcs_retries` adds the resource to the base
  Context spec orbax copies for every save and restore, through
  harness/runtime/orbax_internals.py (which owns every use of orbax internals).
- gcsfs (behind etils.epath) does directory listings, metadata files and the
  commit_success.txt marker. It retries 5xx, 408, 429 and connection errors
  6 times (sleeping 1-2 s, 2-3 s, ... 16-17 s); that is fixed in gcsfs and
  not configurable.
- google-auth finds the credentials gcsfs uses (tensorstore finds its own the
  same way): `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default
  login, or a GCP VM's service account.

To point everything at an emulator, set HARNESS_GCS_EMULATOR=http://127.0.0.1:PORT
and call `configure_gcs_emulator_from_env()` before anything touches GCS.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Mapping

from harness.errors import error_line
from harness.runtime.orbax_internals import add_tensorstore_context_resource
from harness.runtime.quiet import restore_levels, silence_storage_clients

EMULATOR_ENV_VAR = "HARNESS_GCS_EMULATOR"
# How long the start-up check may take for a gs:// path, credentials included: gcsfs
# alone retries an unreachable endpoint for ~50 s before it gives up.
GCS_CHECK_TIMEOUT_S = 20.0

_WRITE_PROBE_PREFIX = ".podharness-write-probe-"
_NO_CREDENTIALS = (
    "no Google credentials found: run `gcloud auth application-default login`, set "
    "GOOGLE_APPLICATION_CREDENTIALS, or run on a GCP VM with a service account "
    f"(or set {EMULATOR_ENV_VAR} for an emulator)"
)


def is_gcs_path(path: str | os.PathLike[str]) -> bool:
    """True for `gs://bucket/...` locations."""
    return os.fspath(path).startswith("gs://")


def gcs_emulator_env(url: str) -> dict[str, str]:
    """Environment variables that point every GCS client we use at `url`.

    STORAGE_EMULATOR_HOST serves gcsfs and google-cloud-storage;
    TENSORSTORE_GCS_HTTP_URL serves tensorstore (without it a save hangs
    silently); GOOGLE_AUTH_TOKEN_FOR_TESTING and NO_GCE_CHECK skip credential
    lookups that would otherwise probe the real metadata server; the gcsfs
    flag stops it probing for zonal buckets the emulator does not know.
    """
    url = url.rstrip("/")
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
    }


def configure_gcs_emulator(url: str) -> dict[str, str]:
    """Sets `gcs_emulator_env(url)` in os.environ and returns it.

    tensorstore reads its variables at its first GCS access and gcsfs reads
    STORAGE_EMULATOR_HOST on every request, but GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
    and NO_GCE_CHECK are read when gcsfs and google-auth are imported: call
    this before importing orbax.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        raise ValueError(f"GCS emulator url must look like http://127.0.0.1:PORT, got {url!r}")
    env = gcs_emulator_env(url)
    os.environ.update(env)
    return env


def configure_gcs_emulator_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """Honours HARNESS_GCS_EMULATOR; returns the emulator url, or None if unset."""
    url = environ.get(EMULATOR_ENV_VAR, "").strip()
    if not url:
        return None
    configure_gcs_emulator(url)
    return url


@dataclasses.dataclass(frozen=True)
class GcsRetryPolicy:
    """Per-request retries of tensorstore's GCS driver (its defaults here)."""

    max_retries: int = 32
    initial_delay_s: float = 1.0
    max_delay_s: float = 32.0

    def tensorstore_resource(self) -> dict[str, int | str]:
        """The `gcs_request_retries` Context resource spec."""
        return {
            "max_retries": self.max_retries,
            "initial_delay": f"{round(self.initial_delay_s * 1000)}ms",
            "max_delay": f"{round(self.max_delay_s * 1000)}ms",
        }


def configure_orbax_gcs_retries(policy: GcsRetryPolicy) -> None:
    """Makes every orbax save and restore use `policy` for tensorstore's GCS requests
    (orbax 0.12.8 takes no Context from callers). Raises if this orbax no longer builds
    its Context the way orbax_internals.py edits, rather than silently not retrying."""
    add_tensorstore_context_resource("gcs_request_retries", policy.tensorstore_resource())


def checkpoint_path_writable(path: str, *, gcs_timeout_s: float = GCS_CHECK_TIMEOUT_S) -> str | None:
    """Why checkpoints can't be written under `path`, or None if they can.

    The reason is short and leaves out `path`, for the caller's one-line
    error. Writes and deletes one empty probe file and creates no
    directories, so a successful check leaves nothing behind. For gs://
    paths it first looks for credentials (unless an emulator is set), and
    the whole check gives up after `gcs_timeout_s`, printing nothing.
    """
    if is_gcs_path(path):
        return _gcs_path_problem(path, gcs_timeout_s)
    return _local_path_problem(path)


def _local_path_problem(path: str) -> str | None:
    existing = pathlib.Path(path).expanduser().absolute()
    try:
        while not existing.exists():  # Checkpointing creates missing parents.
            existing = existing.parent
    except OSError as error:
        return f"cannot look at {existing}: {error.strerror or error}"
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=_WRITE_PROBE_PREFIX, dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return f"cannot write in {existing}: {error.strerror or error}"
    return None


def _gcs_path_problem(path: str, timeout_s: float) -> str | None:
    bucket = urllib.parse.urlsplit(path).netloc
    if not bucket:
        return "no bucket in the gs:// path"
    check = _GcsCheck(path, bucket)
    worker = threading.Thread(target=check.run, name="gcs-write-check", daemon=True)
    levels = silence_storage_clients()  # a failed check is told in one line
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        # Left running (a daemon thread), and its clients left quiet: they may retry
        # and log for another minute.
        return f"no answer within {timeout_s:g} s while {check.stage}"
    restore_levels(levels)
    return check.problem


class _GcsCheck:
    """Credentials, then a probe object written and deleted; run in a worker thread so
    the caller can stop waiting. `stage` says what it is doing, for a timeout message."""

    def __init__(self, path: str, bucket: str) -> None:
        self.path = path
        self.bucket = bucket
        self.stage = "starting"
        self.problem: str | None = None

    def run(self) -> None:
        # Storage and auth clients raise many unrelated types (HttpError, aiohttp and
        # auth errors); any of them means "not writable" and is reported, not raised.
        try:
            self.problem = self._first_problem()
        except Exception as error:
            self.problem = f"failed while {self.stage}: {error_line(error)}"

    def _first_problem(self) -> str | None:
        if not os.environ.get("STORAGE_EMULATOR_HOST"):  # An emulator takes any token.
            self.stage = "looking for Google credentials"
            import google.auth
            import google.auth.exceptions

            try:
                google.auth.default()
            except google.auth.exceptions.DefaultCredentialsError:
                return _NO_CREDENTIALS
        from etils import epath

        self.stage = f"writing a probe object in gs://{self.bucket}"
        probe = epath.Path(self.path) / f"{_WRITE_PROBE_PREFIX}{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except FileNotFoundError:
            return f"bucket gs://{self.bucket} does not exist"
        return None
