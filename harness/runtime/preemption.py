"""Stopping together on preemption (SIGTERM); lost hosts are harness/runtime/watchdog.py's job.

Preemption: a TPU maintenance event or a spot reclaim sends SIGTERM to some hosts,
not necessarily all, and not at the same instant. With `jax.distributed` running, JAX's
preemption sync manager catches SIGTERM and `reached_preemption_sync_point(step)` turns
True on every host at the same step, so all hosts save the same checkpoint. In a single
process a plain signal handler does the same job.
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
