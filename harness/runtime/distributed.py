"""The one place that starts `jax.distributed`.

Three ways a run starts (`--distributed`):
- `auto` (default): explicit coordinates if given (flags `--coordinator_address
  --num_processes --process_id`, or the environment variables `HARNESS_COORDINATOR_ADDRESS
  HARNESS_NUM_PROCESSES HARNESS_PROCESS_ID` that `launch/local.py` sets); otherwise a
  single process with no initialization at all.
- `pod`: `jax.distributed.initialize()` without arguments, so JAX discovers the TPU pod
  from its metadata (the TPU presets set this).
- `off`: never initialize, even if the environment says otherwise.

The initialization timeout is passed on as it is. The heartbeat timeout JAX gets is
derived from `--heartbeat_timeout` so that the harness's watchdog always names a lost
host before JAX aborts everyone: JAX can abort half its heartbeat timeout after a host
freezes, so it gets `jax_heartbeat_timeout(SILENCE_FRACTION * heartbeat_timeout)`,
twice the watchdog's threshold plus a margin (harness/runtime/watchdog.py says why).
"""

from __future__ import annotations

import dataclasses
import os
import signal

import jax

from harness.errors import UsageError
from harness.runtime.sigterm import current_action, record_jax_preemption_notifier
from harness.runtime.watchdog import SILENCE_FRACTION, jax_heartbeat_timeout

ENV_ADDRESS = "HARNESS_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "HARNESS_NUM_PROCESSES"
ENV_PROCESS_ID = "HARNESS_PROCESS_ID"
MODES = ("auto", "pod", "off")


@dataclasses.dataclass(frozen=True)
class Coordinates:
    coordinator_address: str
    num_processes: int
    process_id: int


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name} must be an integer, got {raw!r}") from None


def explicit_coordinates(address: str, num_processes: int, process_id: int) -> Coordinates | None:
    """Flags win over the environment; all three must be known, or none."""
    address = address or os.environ.get(ENV_ADDRESS, "").strip()
    num = num_processes if num_processes > 0 else _env_int(ENV_NUM_PROCESSES)
    pid = process_id if process_id >= 0 else _env_int(ENV_PROCESS_ID)
    given = {"coordinator_address": address or None, "num_processes": num, "process_id": pid}
    if all(v is None for v in given.values()):
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise UsageError(
            f"distributed start needs coordinator_address, num_processes and process_id; "
            f"missing: {', '.join(missing)} (flags or {ENV_ADDRESS}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})"
        )
    if num < 1 or not 0 <= pid < num:
        raise UsageError(f"process_id must be in [0, {num}) and num_processes >= 1, got {pid} of {num}")
    if ":" not in address:
        raise UsageError(f"coordinator_address must be HOST:PORT, got {address!r}")
    return Coordinates(address, num, pid)


def initialize(
    mode: str,
    *,
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    initialization_timeout: int = 300,
    heartbeat_timeout: int = 60,
) -> None:
    """Starts the distributed runtime if this run spans several processes.

    `heartbeat_timeout` is the harness's (`--heartbeat_timeout`), not JAX's: see the
    module docstring.
    """
    if mode not in MODES:
        raise UsageError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
    timeouts = dict(
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=jax_heartbeat_timeout(SILENCE_FRACTION * heartbeat_timeout),
    )
    if mode == "off":
        return
    if mode == "pod":
        _initialize_hearing_sigterm(**timeouts)
        return
    coordinates = explicit_coordinates(coordinator_address, num_processes, process_id)
    if coordinates is None or coordinates.num_processes == 1:
        return
    _initialize_hearing_sigterm(
        coordinator_address=coordinates.coordinator_address,
        num_processes=coordinates.num_processes,
        process_id=coordinates.process_id,
        **timeouts,
    )


def _initialize_hearing_sigterm(**kwargs) -> None:
    """`jax.distributed.initialize`, recording the SIGTERM handler its preemption service
    installs: the harness's listener passes every SIGTERM on to it (sigterm.py says why
    that one and no other), so all hosts can agree on the step to stop at."""
    if not jax.config.jax_enable_preemption_service:
        raise UsageError("jax_enable_preemption_service is off: without JAX's preemption service a SIGTERM "
                         "cannot stop every host at the same step; unset JAX_ENABLE_PREEMPTION_SERVICE")
    before = current_action(signal.SIGTERM)
    jax.distributed.initialize(**kwargs)
    if record_jax_preemption_notifier(before) is None:
        raise UsageError("jax.distributed installed no SIGTERM handler for its preemption service "
                         f"(SIGTERM's handler is at {current_action(signal.SIGTERM).handler}); "
                         "a SIGTERM could not stop every host at the same step")


AGREED_EXIT_WAIT_S = 10


def wait_for_every_host(name: str, timeout_s: float = AGREED_EXIT_WAIT_S) -> None:
    """A bounded barrier in the coordination service (no device work), for hosts that
    agreed to stop: past `timeout_s`, or without `jax.distributed`, it returns anyway."""
    from harness.runtime.jax_internals import coordination_client

    client = coordination_client()
    if client is None or jax.process_count() == 1:
        return
    try:
        client.wait_at_barrier(f"podharness/{name}", int(timeout_s * 1000))
    except Exception:  # a host that never comes: the exit goes ahead, the verdict was agreed
        return
