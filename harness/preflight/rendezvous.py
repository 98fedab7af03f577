"""Rendezvous: find the pod's coordinates, take the roll call (rollcall.py), then start
`jax.distributed` (harness/runtime/distributed.py, the one place that does) bounded
by `--initialization_timeout`, and confirm the process count.

Coordinates come as for harness-train: explicit (flags or the HARNESS_* variables
launch.local sets), or, with `--distributed pod`, from the TPU pod's metadata through
JAX's own cluster detection (which also lists the workers' addresses, used to name a
host that never comes). Without several processes there is nothing to join.

The run id: hosts say which launch they belong to, so that the roll call can turn away
a host left over from an earlier launch instead of letting it take a real host's place.
The launchers (launch.local, launch.tpu_pod) set HARNESS_RUN_ID alike on every host of
one launch. Without it, every host derives the same id from what they share: the
coordinator address, the process count and the config hash. That tells apart a host of
a launch with other settings (or a host whose config differs: its run id then differs
too, and it is turned away naming both ids), but not one of an identical earlier launch:
only a launcher can make an id that is new for each launch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import sys
import time

from harness.config import TrainConfig
from harness.config.groups import DistributedConfig
from harness.errors import UsageError
from harness.preflight.consistency import config_hash
from harness.preflight.results import FAIL, PASS, RENDEZVOUS, Observation
from harness.preflight.rollcall import Probe, RollCall, RollCallServer, call_roll, split_address
from harness.preflight.wire import Hello
from harness.runtime import distributed
from harness.runtime.jax_internals import detect_cluster
from launch.run_id import new_run_id

RUN_ID_VARIABLE = "HARNESS_RUN_ID"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclasses.dataclass(frozen=True)
class Coordinates:
    address: str
    num_processes: int
    process_id: int
    host_names: tuple[str, ...] = ()  # by process index, where the pod's metadata lists them


def launcher_run_id() -> str | None:
    """HARNESS_RUN_ID, the same on every host of one launch; None where no launcher set it."""
    value = os.environ.get(RUN_ID_VARIABLE, "")
    if value and not _RUN_ID.fullmatch(value):
        raise UsageError(f"{RUN_ID_VARIABLE}={value[:80]!r} is not a run id (1 to 64 letters, digits, '.', '_' "
                         f"or '-', starting with a letter or digit)")
    return value or None


def derived_run_id(config: TrainConfig, coordinates: Coordinates) -> str:
    """The run id every host of one launch computes alike without a launcher's."""
    shared = f"{coordinates.address}\0{coordinates.num_processes}\0{config_hash(config)}"
    return "derived-" + hashlib.sha256(shared.encode()).hexdigest()[:12]


def log_stray(line: str) -> None:
    """The coordinator's one line for a connection that is not a roll call of this launch."""
    print(f"harness-preflight: host 0: roll call: {line}", file=sys.stderr, flush=True)


def pod_coordinates(distributed_config: DistributedConfig) -> Coordinates | None:
    """Where this process belongs, or None for a single process."""
    mode = distributed_config.mode
    if mode == "off":
        return None
    if mode == "pod":
        return detected_pod(distributed_config.initialization_timeout)
    if mode not in distributed.MODES:
        raise UsageError(f"--distributed must be one of {', '.join(distributed.MODES)}, got {mode!r}")
    found = distributed.explicit_coordinates(distributed_config.coordinator_address, distributed_config.num_processes,
                                             distributed_config.process_id)
    if found is None or found.num_processes == 1:
        return None
    return Coordinates(found.coordinator_address, found.num_processes, found.process_id)


def detected_pod(timeout_s: int) -> Coordinates:
    """JAX's own cluster detection (harness/runtime/jax_internals.py: jax 0.10.2 has no
    public way to ask for the coordinates without initializing)."""
    found = detect_cluster(timeout_s)
    if found is None:
        raise UsageError("--distributed pod: no TPU pod (or other cluster JAX knows) was detected here")
    names = found.worker_names if len(found.worker_names) == found.num_processes else ()
    return Coordinates(found.coordinator_address, found.num_processes, found.process_id, names)


@dataclasses.dataclass(frozen=True)
class Joined:
    """How this host's rendezvous went. `run_id` is the pod's (from the coordinator): the
    launcher's run id, or a new one where the launch's was derived, so that scratch files
    of an earlier identical launch are never taken for this one's."""

    observation: Observation
    run_id: str
    joined: bool
    roll: RollCall | None = None  # process 0 only
    probe: Probe | None = None


def join(config: TrainConfig, coordinates: Coordinates | None) -> Joined:
    """Roll call, then jax.distributed; never waits past the timeouts."""
    if coordinates is None:
        return Joined(Observation(RENDEZVOUS, PASS, "single process", "one process: nothing to join"),
                      new_run_id(), True)
    timeout = config.distributed.initialization_timeout
    given = launcher_run_id()
    run_id = given or derived_run_id(config, coordinates)
    server = None
    if coordinates.process_id == 0:
        _, port = split_address(coordinates.address)
        server = RollCallServer(port, coordinates.num_processes, timeout, run_id, log=log_stray,
                                pod_run_id=given or new_run_id()).start()
    hello = Hello(coordinates.process_id, coordinates.num_processes, socket.gethostname(), os.getpid(), run_id)
    probe = call_roll(coordinates.address, hello, timeout)
    roll = server.wait() if server is not None else None
    metrics = {"attempts": float(probe.attempts), "waited_s": probe.waited_s}
    if probe.reached:
        metrics["tcp_connect_ms"] = probe.connect_s * 1e3
    if probe.reply is None:
        why = probe.error if probe.reached else (f"cannot reach the coordinator (host 0) at {coordinates.address}: "
                                                 f"{probe.error}")
        return Joined(Observation(RENDEZVOUS, FAIL, "no coordinator" if not probe.reached else "no answer", why,
                                  metrics=metrics), "", False, roll, probe)
    if probe.reply.kind == "abort":
        return Joined(Observation(RENDEZVOUS, PASS, "arrived; pod incomplete",
                                  f"reached {coordinates.address} in {probe.connect_s * 1e3:.1f} ms; the coordinator "
                                  f"gave up: {probe.reply.reason}", metrics=metrics),
                      probe.reply.run_id, False, roll, probe)
    started = time.perf_counter()
    distributed.initialize("auto", coordinator_address=coordinates.address,
                           num_processes=coordinates.num_processes, process_id=coordinates.process_id,
                           initialization_timeout=timeout, heartbeat_timeout=config.distributed.heartbeat_timeout)
    metrics["init_s"] = time.perf_counter() - started
    observation = dataclasses.replace(_confirmed(coordinates, probe, metrics), seconds=probe.waited_s + metrics["init_s"])
    return Joined(observation, probe.reply.run_id, True, roll, probe)


def _confirmed(coordinates: Coordinates, probe: Probe, metrics: dict[str, float]) -> Observation:
    import jax

    count, index = jax.process_count(), jax.process_index()
    value = f"tcp {probe.connect_s * 1e3:.1f} ms, init {metrics['init_s']:.2f} s"
    detail = (f"reached {coordinates.address} in {probe.connect_s * 1e3:.2f} ms after {probe.attempts} attempt(s), "
              f"waited {probe.waited_s:.2f} s for the roll call, jax.distributed up in {metrics['init_s']:.2f} s: "
              f"process {index} of {count}")
    if (count, index) != (coordinates.num_processes, coordinates.process_id):
        return Observation(RENDEZVOUS, FAIL, f"process {index} of {count}", f"{detail}, expected process "
                           f"{coordinates.process_id} of {coordinates.num_processes}", metrics=metrics)
    return Observation(RENDEZVOUS, PASS, value, detail, metrics=metrics)


def missing_host_observation(host: int, timeout_s: float, name: str | None) -> Observation:
    where = f" ({name})" if name else ""
    return Observation(RENDEZVOUS, FAIL, "never arrived",
                       f"host {host}{where} never reached the coordinator within {timeout_s:g} s "
                       f"(--initialization_timeout)")
