"""harness-fit's running account of its compiles, so a slow compile never looks like a
hang: each compile as it starts (target, batch, settings) and as it ends (elapsed time,
and the compiler's peak memory, or out of memory with what it needed).

On a terminal this is a live tqdm bar whose clock ticks during a compile, with each
finished compile printed above it; anywhere else (a pipe, a log, CI) plain lines:

    harness-fit: compile 1 (of at most 9): batch 256 (16 per device) on v5litepod-16: transformer 1b, ...
    harness-fit: compile 1: batch 256 on v5litepod-16 fits: peak 2.84 GiB of 15.75 GiB HBM (39.2 s)
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from tqdm import tqdm

from harness.config.groups import ModelConfig
from harness.fit.compile import CompileOutcome
from harness.fit.topology import Target
from harness.runtime.memory import format_bytes

PROG = "harness-fit"
TICK_S = 0.5


def describe_settings(model: ModelConfig, mesh: dict[str, int]) -> str:
    """The settings every compile of one run shares: model, dtypes, remat, mesh."""
    named = f" {model.size}" if model.size else ""
    axes = " ".join(f"{axis}={size}" for axis, size in mesh.items())
    return (f"{model.name}{named}, {model.param_dtype} params, {model.compute_dtype} compute, "
            f"remat {model.remat}, mesh {axes}")


def outcome_text(outcome: CompileOutcome, hbm_bytes: int) -> str:
    """`fits: peak X of Y HBM` or `out of memory: needs X of Y HBM`, from the compiler."""
    if outcome.fits:
        if outcome.device_peak is None:
            return f"fits in {format_bytes(hbm_bytes)} HBM (no device peak: it offloads to host memory)"
        return f"fits: peak {format_bytes(outcome.device_peak)} of {format_bytes(hbm_bytes)} HBM"
    needed = outcome.oom.required_bytes
    return "out of memory" + ("" if needed is None else f": needs {format_bytes(needed)} of "
                                                         f"{format_bytes(hbm_bytes)} HBM")


class CompileProgress:
    """Told of each compile by harness/fit/runner.py; `live` (default: the stream is a
    terminal) draws a bar instead of plain lines. Use as a context manager: the bar and
    its clock stop when the block ends, however it ends."""

    def __init__(self, stream: TextIO, *, live: bool | None = None):
        self._stream = stream
        self._live = stream.isatty() if live is None else live
        self._bar: tqdm | None = None
        self._target, self._settings, self._hbm, self._total = "", "", 0, 1
        self._count = 0
        self._running: dict[int, tuple[str, int]] = {}   # compile number -> its target and HBM, while it runs
        self._batch, self._started = 0, 0.0
        self._ticking = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> CompileProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop_ticking()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def begin(self, target: Target, settings: str, hbm_bytes: int, total: int) -> None:
        """The run's target and shared settings, the HBM to compare with, and the most
        compiles it may take (1 without the search)."""
        self._target, self._settings, self._hbm, self._total = target.product, settings, hbm_bytes, total
        if self._live:
            self._bar = tqdm(total=total, file=self._stream, unit="compile", dynamic_ncols=True, leave=False,
                             bar_format="{desc} {n_fmt}/{total_fmt} compiles [{elapsed}]")

    def started(self, batch_size: int, devices: int, *, target: str | None = None, hbm_bytes: int | None = None,
                settings: str | None = None) -> int:
        """Says a compile began (on `target`, against `hbm_bytes`, with `settings`: by
        default the run's); returns its number, which `finished` takes when compiles
        overlap or targets differ (harness/fit/pool.py)."""
        self._count += 1
        where = target or self._target
        self._running[self._count] = (where, self._hbm if hbm_bytes is None else hbm_bytes)
        self._batch, self._started = batch_size, time.perf_counter()
        of = f"{self._count}/{self._total}" if self._total == 1 else f"{self._count} (of at most {self._total})"
        self._say(f"compile {of}: batch {batch_size} ({batch_size // devices} per device) on {where}: "
                  f"{settings or self._settings}")
        if self._bar is not None and self._ticker is None:
            self._ticking.clear()
            self._ticker = threading.Thread(target=self._tick, name="fit progress", daemon=True)
            self._ticker.start()
        return self._count

    def finished(self, outcome: CompileOutcome, number: int | None = None) -> None:
        number = self._count if number is None else number
        where, hbm = self._running.pop(number, (self._target, self._hbm))
        if not self._running:
            self._stop_ticking()
        took = "from the cache" if outcome.cached else f"{outcome.seconds:.1f} s"
        self._say(f"compile {number}: batch {outcome.batch_size} on {where} {outcome_text(outcome, hbm)} ({took})")
        if self._bar is not None:
            self._bar.set_description_str(f"{PROG}: batch {outcome.batch_size} "
                                          f"{'fits' if outcome.fits else 'out of memory'}", refresh=False)
            self._bar.update(1)
            self._bar.refresh()

    def _say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(f"{PROG}: {line}", file=self._stream)
        else:
            print(f"{PROG}: {line}", file=self._stream, flush=True)

    def _tick(self) -> None:
        """Keeps the bar's clock moving while the compiler holds the main thread."""
        while not self._ticking.is_set():
            self._bar.set_description_str(f"{PROG}: compiling batch {self._batch} on {self._target}: "
                                          f"{time.perf_counter() - self._started:.0f} s", refresh=True)
            self._ticking.wait(TICK_S)

    def _stop_ticking(self) -> None:
        self._ticking.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5 * TICK_S)
            self._ticker = None
