"""Builds the next batches in a background thread while the device runs this one.

`produce(step)` is called once per step, in step order, on one thread, so a stateful
input pipeline read inside it sees exactly the order the loop does. It moves the host
work (reading and rendering the mock records, tokenizing, assembling the global array)
off the loop's critical path. The queue is bounded, every wait has a timeout, and an
error in the producer is re-raised in the loop.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_POLL_S = 0.5


class Prefetcher:
    """Iterates `(step, item)` for `steps`, computing `produce(step)` up to `depth` ahead."""

    def __init__(self, produce: Callable[[int], Any], steps: range, *, depth: int = 2):
        self._produce = produce
        self._steps = steps
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for step in self._steps:
                if not self._put((step, self._produce(step), None)):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            self._put((None, None, err))

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        for _ in self._steps:
            while True:
                try:
                    step, item, error = self._queue.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        raise RuntimeError("batch prefetch thread stopped without a batch") from None
            if error is not None:
                raise error
            yield step, item

    def close(self) -> None:
        """Stops the producer; returns within about one poll interval."""
        self._stop.set()
        self._thread.join(timeout=5 * _POLL_S)
