"""One background thread for slow, host-side outputs (PNG rendering, wandb calls).

Jobs run in submission order (wandb needs its steps in order) off the training loop's
critical path. A failing job is logged and skipped, never raised into training. `close`
waits a bounded time for what is queued.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

logger = logging.getLogger("harness.outputs.background")

_STOP = object()


class BackgroundWriter:
    def __init__(self, name: str = "output-writer"):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._jobs.put((fn, args, kwargs))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, kwargs = job
            try:
                fn(*args, **kwargs)
            except Exception as err:  # an output must never stop training
                logger.warning("background output %s failed: %s: %s",
                               getattr(fn, "__qualname__", fn), type(err).__name__, err)

    def close(self, timeout_s: float) -> bool:
        """Runs what is queued, then stops; False if that took longer than `timeout_s`."""
        self._jobs.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("outputs still being written after %.0f s; not waiting longer", timeout_s)
            return False
        return True
