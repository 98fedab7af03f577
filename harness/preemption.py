"""Stopping together: preemption (SIGTERM) and lost hosts.

Preemption: a TPU maintenance event or a spot reclaim sends SIGTERM to some hosts,
not necessarily all, and not at the same instant. With `jax.distributed` running, JAX's
preemption sync manager catches SIGTERM and `reached_preemption_sync_point(step)` turns
True on every host at the same step, so all hosts save the same checkpoint. In a single
process a plain signal handler does the same job.

Lost hosts: when a peer dies, the next collective raises on the survivors.
`lost_hosts` asks the coordination service which hosts are still alive (it answers once
the heartbeat timeout has passed), so the message names the missing ones.
"""

from __future__ import annotations

import signal
import threading
import types

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`should_stop(step)` is True on every host at the same step after a SIGTERM."""

    def __init__(self) -> None:
        self._distributed = jax.process_count() > 1
        self._signalled = threading.Event()
        self._previous = None
        if not self._distributed:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
        self._signalled.set()

    def should_stop(self, step: int) -> bool:
        if self._distributed:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._signalled.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def lost_hosts(timeout_s: float) -> list[int] | None:
    """Hosts the coordination service no longer hears from; None if it can't tell
    within `timeout_s` (the query runs in a daemon thread, so it never blocks longer)."""
    if jax.process_count() == 1:
        return []
    from jax._src import distributed  # the public API has no liveness query

    answer: list[list[int]] = []

    def ask() -> None:
        everyone = list(range(jax.process_count()))
        live = distributed.global_state.client.get_live_nodes(everyone)
        answer.append(sorted(set(everyone) - set(live)))

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return answer[0] if answer else None
