"""Live progress on process 0: a tqdm bar (step, loss, steps/s) when stderr is a
terminal; otherwise nothing extra, and the periodic `Step N:` lines, which then carry
the step rate, are the progress. Other hosts never show a bar."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(self, *, is_primary: bool, total: int, initial: int, stream: TextIO | None = None):
        stream = stream or sys.stderr
        self._bar = (
            tqdm(total=total, initial=initial, unit="step", file=stream, dynamic_ncols=True, leave=False)
            if is_primary and stream.isatty()
            else None
        )
        self._last_time = time.perf_counter()
        self._last_step = initial

    @property
    def live(self) -> bool:
        return self._bar is not None

    def advance(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self._bar.update(1)

    def rate_since_last(self, step: int) -> float | None:
        """Steps per second since the last call (None the first time: it would include
        compilation)."""
        now = time.perf_counter()
        rate = (step - self._last_step) / (now - self._last_time) if step > self._last_step else None
        self._last_time, self._last_step = now, step
        return rate

    def write(self, text: str) -> None:
        """Prints above the bar without breaking it."""
        assert self._bar is not None
        self._bar.write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
