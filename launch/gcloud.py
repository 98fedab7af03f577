"""The gcloud commands that address a Cloud TPU VM, as argument lists.

levanter's launcher passes gcloud its arguments as a list, never as one concatenated
shell string; so do these. The only string is the remote script, given to ssh as one
`--command` value (`remote_command`). Standard library only: launchers must not import
the harness (jax).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import threading
from pathlib import Path

from launch.failures import describe_returncode
from launch.supervisor import run_bounded

GCLOUD_TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
DESCRIBE_TIMEOUT_S = 120.0


class LaunchError(Exception):
    """A step before the workers start failed; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class TpuVm:
    """The TPU VM (pod slice) that gcloud commands address."""

    name: str
    zone: str
    project: str

    def location_flags(self) -> list[str]:
        return ["--zone", self.zone, "--project", self.project]


def describe_argv(tpu: TpuVm) -> list[str]:
    return [*GCLOUD_TPU_VM, "describe", tpu.name, *tpu.location_flags(), "--format=json"]


def scp_argv(tpu: TpuVm, source: Path, remote_path: str) -> list[str]:
    """Copy `source` to `remote_path` (relative to the remote home) on every worker."""
    return [*GCLOUD_TPU_VM, "scp", str(source), f"{tpu.name}:{remote_path}", *tpu.location_flags(), "--worker=all"]


def ssh_argv(tpu: TpuVm, worker: int | str, command: str) -> list[str]:
    """Run `command` on worker `worker` (a number, or "all")."""
    return [*GCLOUD_TPU_VM, "ssh", tpu.name, *tpu.location_flags(), f"--worker={worker}", "--command", command]


def remote_command(script: str) -> str:
    """The --command value: the script run by bash, whatever the remote login shell is."""
    return shlex.join(["bash", "-c", script])


def count_workers(tpu: TpuVm, stop_event: threading.Event | None = None) -> int:
    """Number of workers (hosts) of the TPU VM, from `gcloud ... describe`."""
    returncode, output = run_bounded(
        describe_argv(tpu), timeout=DESCRIBE_TIMEOUT_S, stop_event=stop_event, capture_stdout=True
    )
    if returncode != 0:
        raise LaunchError(f"describing {tpu.name} failed ({describe_returncode(returncode)})")
    try:
        endpoints = json.loads(output)["networkEndpoints"]
    except (ValueError, KeyError, TypeError) as error:
        raise LaunchError(f"unexpected `describe` output for {tpu.name}: {error}") from error
    if not endpoints:
        raise LaunchError(f"{tpu.name} has no network endpoints (is it still being created?)")
    return len(endpoints)
