"""Storage concerns of the harness: gs:// paths, a GCS emulator, retries.

Checkpoints go through orbax to a local directory or to gs://bucket/path. Three
libraries touch GCS on that path and each retries on its own:

- tensorstore writes and reads the array data. Its GCS driver retries 5xx,
  429 and dropped connections with exponential backoff, configured by the
  `gcs_request_retries` resource of its Context (defaults: 32 retries, 1 s
  doubling to 32 s). orbax 0.12.8 builds that Context itself with no hook to
  pass one in, so `configure_orbax_gcs_retries` edits the base Context spec
  orbax copies for every save and restore.
- gcsfs (behind etils.epath) does directory listings, metadata files and the
  commit_success.txt marker. It retries 5xx, 408, 429 and connection errors
  6 times (sleeping 1-2 s, 2-3 s, ... 16-17 s); that is fixed in gcsfs and
  not configurable.
- `retry_transient` retries a whole operation for outages longer than that.

To point everything at an emulator, set HARNESS_GCS_EMULATOR=http://127.0.0.1:PORT
and call `configure_gcs_emulator_from_env()` before anything touches GCS.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import random
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import TypeVar

EMULATOR_ENV_VAR = "HARNESS_GCS_EMULATOR"

_T = TypeVar("_T")
_TRANSIENT_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504})
# Status names tensorstore puts at the start of its error messages, and the
# phrase it uses once its own retries are spent.
_TRANSIENT_TENSORSTORE_PREFIXES = ("UNAVAILABLE:", "DEADLINE_EXCEEDED:", "RESOURCE_EXHAUSTED:")
_TENSORSTORE_RETRIES_SPENT = "retry attempts failed"
_WRITE_PROBE_PREFIX = ".podharness-write-probe-"

log = logging.getLogger(__name__)


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
    """Makes every orbax save and restore use `policy` for tensorstore's GCS requests.

    orbax-checkpoint 0.12.8 creates its tensorstore Context in
    `tensorstore_utils.get_ts_context` from two module-level dicts and accepts
    none from callers, so the resource is added to those dicts. Raises if a
    different orbax no longer has them, rather than silently not retrying.
    """
    from orbax.checkpoint._src.serialization import tensorstore_utils

    for name in ("_BASE_TS_CONTEXT", "_DEFAULT_OCDBT_TS_CONTEXT"):
        spec = getattr(tensorstore_utils, name, None)
        if not isinstance(spec, dict):
            raise RuntimeError(
                f"orbax tensorstore_utils.{name} is gone; re-check how this orbax "
                "version builds its tensorstore Context before relying on GCS retries"
            )
        spec["gcs_request_retries"] = policy.tensorstore_resource()


def is_transient_storage_error(error: BaseException) -> bool:
    """True if `error` (or what caused it) looks like a passing storage fault.

    Covers dropped connections and timeouts, HTTP 408/429/5xx from gcsfs or
    google-cloud-storage, and tensorstore's UNAVAILABLE-style statuses or its
    "retries spent" error. A missing bucket or a permission error is not
    transient: retrying it only delays the real message.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if _is_transient_single(current):
            return True
        pending.extend((current.__cause__, current.__context__))
    return False


def _is_transient_single(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    for attribute in ("code", "status"):
        value = getattr(error, attribute, None)
        if isinstance(value, int) and value in _TRANSIENT_HTTP_CODES:
            return True
    message = str(error)
    if message.startswith(_TRANSIENT_TENSORSTORE_PREFIXES) or _TENSORSTORE_RETRIES_SPENT in message:
        return True
    try:
        from gcsfs.retry import is_retriable
    except ImportError:
        return False
    return is_retriable(error)


def retry_transient(
    fn: Callable[[], _T],
    *,
    attempts: int,
    initial_delay: float,
    max_delay: float,
    is_transient: Callable[[BaseException], bool] = is_transient_storage_error,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> _T:
    """Calls `fn` until it succeeds, retrying transient errors with backoff.

    The n-th retry waits a random time in [d/2, d] with
    d = min(max_delay, initial_delay * 2**(n-1)): exponential backoff whose
    jitter keeps many hosts from retrying in lockstep. Non-transient errors
    and the last attempt's error propagate unchanged.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if initial_delay < 0 or max_delay < initial_delay:
        raise ValueError(f"need 0 <= initial_delay <= max_delay, got {initial_delay}, {max_delay}")
    rng = rng or random.Random()
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as error:  # Classified by is_transient; others re-raise.
            if attempt >= attempts or not is_transient(error):
                raise
            delay = min(max_delay, initial_delay * 2 ** (attempt - 1))
            delay *= 0.5 + 0.5 * rng.random()
            log.warning(
                "transient storage error (attempt %d of %d), retrying in %.2fs: %s",
                attempt,
                attempts,
                delay,
                error,
            )
            sleep(delay)
            attempt += 1


def checkpoint_path_writable(path: str) -> str | None:
    """Why checkpoints can't be written under `path`, or None if they can.

    The reason is short and leaves out `path`, for the caller's one-line
    error. Writes and deletes one empty probe file and creates no
    directories, so a successful check leaves nothing behind.
    """
    if is_gcs_path(path):
        return _gcs_path_problem(path)
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


def _gcs_path_problem(path: str) -> str | None:
    from etils import epath

    bucket = urllib.parse.urlsplit(path).netloc
    if not bucket:
        return "no bucket in the gs:// path"
    probe = epath.Path(path) / f"{_WRITE_PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except FileNotFoundError:
        return f"bucket gs://{bucket} does not exist"
    # Storage clients raise many unrelated types (HttpError, aiohttp and auth
    # errors); any of them means "not writable" and is reported, not raised.
    except Exception as error:
        return f"cannot write in {path}: {type(error).__name__}: {error}"
    return None
