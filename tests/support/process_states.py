"""The two process states a run meets, as environments for the harness's subprocesses.

- `cpu`: a CPU preset's: JAX's platform forced to CPU, libtpu never loaded.
- `tpu-vm`: a TPU VM's: JAX's platform not forced (`JAX_PLATFORMS=""`, JAX's own choice),
  so JAX loads libtpu, which installs its failure signal handlers (SIGTERM, SIGSEGV,
  SIGABRT, ...) as on every TPU VM. On this CPU machine libtpu then finds no TPU and JAX
  goes on with the CPU devices. Several libtpu processes may run at once here (a local
  pod, or tests side by side), which libtpu's lock file would otherwise refuse.

Tests of signals, exits and checkpoints run in both (`PROCESS_STATES` as a parameter).
"""

from __future__ import annotations

from pathlib import Path

CPU = "cpu"
TPU_VM = "tpu-vm"
PROCESS_STATES = (CPU, TPU_VM)
_ENVIRONMENTS = {
    CPU: {"JAX_PLATFORMS": "cpu"},
    TPU_VM: {"JAX_PLATFORMS": "", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_SKIP_MDS_QUERY": "1"},
}


def state_env(state: str) -> dict[str, str]:
    """The environment variables that put a harness subprocess in `state`."""
    return dict(_ENVIRONMENTS[state])


def libtpu_loaded(pid: int) -> bool:
    """Whether process `pid` has libtpu mapped (read from outside, in /proc)."""
    return "libtpu" in Path(f"/proc/{pid}/maps").read_text()
