"""Every use of JAX's private modules (`jax._src`), in one place, so that a jax upgrade that
moves them breaks here and in tests/test_private_apis.py, which checks the pinned
jax/jaxlib 0.10.2 still has each of them with the signature used.

What is used, and why (jax 0.10.2 has no public way to do either):
- `jax._src.distributed.global_state.client`, the coordination service's client
  (`jaxlib._jax.DistributedRuntimeClient`), for its key-value store: `key_value_set(key,
  value, allow_overwrite=True)` and `key_value_dir_get(prefix)`. The watchdog's heartbeats
  (runtime/watchdog.py), the peer check after a SIGTERM (runtime/preemption.py), and
  preflight's progress and silent-host checks (preflight/guard.py) go through it;
  `jax.distributed` exports only initialize/is_initialized/shutdown.
- `jax._src.clusters.ClusterEnv`: `auto_detect_unset_distributed_params` (the coordinates
  `jax.distributed.initialize` would use on this pod, without initializing),
  `_cluster_types` and a TPU environment's `_get_worker_list_in_slice()` (the workers'
  addresses by process index). preflight's rendezvous needs them before initializing,
  to name a host that never comes.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def coordination_client() -> Any:
    """JAX's client of the coordination service; None before `jax.distributed.initialize`
    and again once `jax.distributed.shutdown` (an atexit handler) has run."""
    from jax._src import distributed

    return distributed.global_state.client


@dataclasses.dataclass(frozen=True)
class DetectedCluster:
    coordinator_address: str
    num_processes: int
    process_id: int
    worker_names: tuple[str, ...]  # by process index; () where the environment lists none


def detect_cluster(timeout_s: int) -> DetectedCluster | None:
    """What JAX's own cluster detection finds here (a TPU pod's metadata, SLURM, ...), or
    None where it finds no cluster. May query a metadata server for up to `timeout_s`."""
    from jax._src.clusters import ClusterEnv

    address, num, pid, _ = ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, timeout_s)
    if address is None or num is None or pid is None:
        return None
    env = next((e for e in ClusterEnv._cluster_types if not e.opt_in_only_method and e.is_env_present()), None)
    try:
        names = tuple(env._get_worker_list_in_slice()) if env is not None else ()
    except (AttributeError, NotImplementedError, ValueError, OSError):
        names = ()
    return DetectedCluster(address, num, pid, names)
