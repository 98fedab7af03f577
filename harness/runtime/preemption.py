"""Stopping together on preemption (SIGTERM); lost hosts are harness/runtime/watchdog.py's job.

Preemption: a TPU maintenance event, a spot reclaim, a GKE eviction or the pod launcher's
stop sends SIGTERM to some hosts, not necessarily all, and not at the same instant. With
`jax.distributed` running, JAX's preemption sync manager hears SIGTERM and
`reached_preemption_sync_point(step)` turns True on every host at the same step, so all
hosts save the same checkpoint (then exit 42, restartable: harness/errors.py). In a
single process a flag does the same job.

SIGTERM is heard on a thread (harness/runtime/sigterm.py), which passes it on to JAX's
preemption notifier when `jax.distributed` installed one (and to no other C handler:
libtpu's, on a single-host TPU VM, would print a stack trace and kill the process), so
a host blocked in a collective whose peer is gone still acts on it: after a few seconds
without a finished step, harness/runtime/stop_deadline.py checks the peers and, if one is
gone, exits 42 instead of waiting for the watchdog's threshold or the launcher's SIGKILL.
"""

from __future__ import annotations

import threading

import jax
from jax.experimental import multihost_utils

from harness.runtime.jax_internals import coordination_client
from harness.runtime.sigterm import SigtermListener, jax_preemption_notifier
from harness.runtime.stop_deadline import LeftTheService, StopDeadline
from harness.runtime.watchdog import KEY_PREFIX


def _read_beats() -> dict[str, str]:
    client = coordination_client()
    if client is None:
        raise LeftTheService("jax.distributed has been shut down in this process")
    return dict(client.key_value_dir_get(KEY_PREFIX))


class PreemptionWatch:
    """`should_stop(step)` is True on every host at the same step after a SIGTERM."""

    def __init__(self) -> None:
        self._distributed = jax.process_count() > 1
        self._signalled = threading.Event()
        self._deadline = StopDeadline(jax.process_index(), jax.process_count(),
                                      _read_beats if self._distributed else None)
        notifier = jax_preemption_notifier() if self._distributed else None
        self._listener = SigtermListener(self._on_sigterm, notifier=notifier).start()

    def _on_sigterm(self) -> None:
        self._signalled.set()
        self._deadline.stop_requested()

    def should_stop(self, step: int) -> bool:
        self._deadline.step_finished()
        if self._distributed:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._signalled.is_set()

    def close(self) -> None:
        """The loop has ended. Without a stop request SIGTERM goes back to its previous
        handler; after one, the deadline keeps watching until the process exits."""
        self._deadline.loop_ended()
        if self._listener is not None and not self._signalled.is_set():
            self._listener.close()
            self._listener = None
