"""Fault injection, for testing only: `--testing_fault KIND --testing_fault_host H`
makes host H misbehave in one way, so a test (or a sceptical reader) can see that the
check meant to catch it does, and names exactly that host. Off by default; a report
made with a fault says so at the top (`testing_fault` in preflight.json).
"""

from __future__ import annotations

import dataclasses

from harness.errors import UsageError

JAX_VERSION = "jax_version"  # the host reports another jax version
CODE_HASH = "code_hash"  # the host's harness code hash differs
WRONG_DEVICE_RESULT = "wrong_device_result"  # one device's matmul result is off by one
NEVER_START = "never_start"  # the host never joins the rendezvous
UNWRITABLE_CHECKPOINT_DIR = "unwritable_checkpoint_dir"  # the host cannot write the checkpoint dir
KINDS = (JAX_VERSION, CODE_HASH, WRONG_DEVICE_RESULT, NEVER_START, UNWRITABLE_CHECKPOINT_DIR)

# What the faulty host appends to the versions or code it reports.
MARK = "+testing-fault"


@dataclasses.dataclass(frozen=True)
class Fault:
    """The injected fault, or none (`kind` ""); `here(kind)` asks whether this host
    must misbehave that way."""

    kind: str = ""
    host: int = -1
    this_host: int = -1

    def here(self, kind: str) -> bool:
        return self.kind == kind and self.host == self.this_host

    def describe(self) -> str:
        return f"{self.kind} on host {self.host}" if self.kind else "none"


def check_fault(kind: str, host: int, num_processes: int) -> None:
    """Refuses faults that cannot be injected; num_processes 0 means not known yet."""
    if not kind:
        if host >= 0:
            raise UsageError("--testing_fault_host needs --testing_fault")
        return
    if kind not in KINDS:
        raise UsageError(f"--testing_fault must be one of {', '.join(KINDS)}, got {kind!r}")
    if host < 0:
        raise UsageError("--testing_fault needs --testing_fault_host H (the host to break)")
    if num_processes and host >= num_processes:
        raise UsageError(f"--testing_fault_host {host} is not a host of this {num_processes}-process pod")
    if kind == NEVER_START and num_processes == 1:
        raise UsageError("--testing_fault never_start needs a pod of several processes")
