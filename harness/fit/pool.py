"""Compiles run side by side in worker processes, where there are cores to spare.

One TPU compile keeps one core busy, and two compiles in one process run one after the
other (measured: two threads, 2 x 88 s of CPU in 269 s), so harness-fit spreads them
over processes (`python -m harness.fit.worker`, one libtpu each, JSON lines over pipes,
never pickle). With one worker it compiles in its own process instead, in the order
asked. Either way callers `submit` compiles and take them back with `next_finished`.

    pool = CompilePool(workers=2, cache_dir=default_cache_dir(), timeout_s=1800)
    job = pool.submit(config, census=True)
    finished_job, outcome = pool.next_finished()
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from typing import IO

from harness.config import TrainConfig
from harness.errors import UsageError
from harness.fit.cache import OutcomeCache
from harness.fit.compile import CompileOutcome
from harness.fit.progress import CompileProgress
from harness.fit.topology import resolve
from harness.fit.worker import StepCompiler, request_line


def default_workers() -> int:
    """The cores this process may use, at most 4 (each compile of a 1B model holds 1-2.5 GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


class CompileError(RuntimeError):
    """A compile failed for a reason other than memory, or a worker died or ran past its time."""


@dataclasses.dataclass
class _Worker:
    process: subprocess.Popen
    log: IO[bytes]
    job: int | None = None
    started: float = 0.0
    buffer: bytes = b""

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-1500:]


class CompilePool:
    def __init__(self, workers: int, cache_dir: str, *, timeout_s: float, progress: CompileProgress | None = None):
        self.workers = workers
        self.cache_dir = cache_dir
        self.timeout_s = timeout_s
        self.progress = progress
        self._numbers: dict[int, int] = {}          # job -> its number in the progress lines
        self.peak_rss_mb: dict[int, float] = {}    # worker index -> its peak RSS
        self._queue: list[tuple[int, int, TrainConfig, bool]] = []   # a heap of (priority, job, ...)
        self._configs: dict[int, TrainConfig] = {}
        self._notes: dict[int, dict] = {}            # job -> what progress says of it (HBM, settings)
        self._next_id = 0
        self._local = StepCompiler(OutcomeCache(cache_dir)) if workers <= 1 else None
        self._pool: list[_Worker] = []
        self._selector = selectors.DefaultSelector()

    @property
    def parallel(self) -> bool:
        return self.workers > 1

    def submit(self, config: TrainConfig, *, census: bool = False, priority: int = 0, note: dict | None = None) -> int:
        """Queues a compile (lower `priority` first, then in the order asked); returns its
        job id. `note`: the HBM and settings its progress lines give."""
        job = self._next_id
        self._next_id += 1
        self._notes[job] = note or {}
        heapq.heappush(self._queue, (priority, job, config, census))
        self._configs[job] = config
        self._dispatch()
        return job

    def in_flight(self) -> int:
        return len(self._queue) + sum(w.job is not None for w in self._pool)

    def next_finished(self) -> tuple[int, CompileOutcome]:
        """The next compile to finish (in-process: the oldest asked for, compiled now)."""
        if self._local is not None:
            _, job, config, census = heapq.heappop(self._queue)
            self._started(job, config)
            return self._finished(job, self._local.compile(config, census=census))
        if not self.in_flight():
            raise RuntimeError("next_finished with nothing submitted")
        while True:
            deadline = min(w.started for w in self._pool if w.job is not None) + self.timeout_s
            for key, _ in self._selector.select(timeout=max(0.0, deadline - time.monotonic())):
                result = self._read(key.data)
                if result is not None:
                    self._dispatch()
                    return self._finished(*result)
            late = [w for w in self._pool if w.job is not None and time.monotonic() - w.started > self.timeout_s]
            if late:
                config = self._configs[late[0].job]
                self.close()
                raise CompileError(f"a compile ran past --compile_timeout={self.timeout_s:g} s (batch "
                                   f"{config.data.batch_size} on {config.tpu.topology})")

    def _read(self, worker: _Worker) -> tuple[int, CompileOutcome] | None:
        chunk = os.read(worker.process.stdout.fileno(), 1 << 16)
        if not chunk:
            config = self._configs[worker.job]
            tail = worker.log_tail()
            self.close()
            raise CompileError(f"a compile worker exited (code {worker.process.poll()}) while compiling batch "
                               f"{config.data.batch_size} on {config.tpu.topology}: {tail.strip()[-600:]}")
        worker.buffer += chunk
        if b"\n" not in worker.buffer:
            return None
        line, worker.buffer = worker.buffer.split(b"\n", 1)
        reply = json.loads(line)
        job, worker.job = worker.job, None
        if "error" in reply:
            self.close()
            raise (UsageError if reply["usage"] else CompileError)(reply["error"])
        self.peak_rss_mb[self._pool.index(worker)] = reply["peak_rss_mb"]
        return job, CompileOutcome.from_dict(reply["outcome"])

    def _dispatch(self) -> None:
        if self._local is not None:
            return
        while self._queue:
            idle = next((w for w in self._pool if w.job is None), None)
            if idle is None and len(self._pool) < self.workers:
                idle = self._start_worker()
            if idle is None:
                return
            _, job, config, census = heapq.heappop(self._queue)
            idle.job, idle.started = job, time.monotonic()
            self._started(job, config)
            idle.process.stdin.write(request_line(job, config, census))
            idle.process.stdin.flush()

    def _started(self, job: int, config: TrainConfig) -> None:
        if self.progress is not None:
            target = resolve(config.tpu.topology, config.tpu.chip_config, config.mesh.num_slices)
            self._numbers[job] = self.progress.started(config.data.batch_size, target.num_devices,
                                                       target=target.product, **self._notes.pop(job, {}))

    def _finished(self, job: int, outcome: CompileOutcome) -> tuple[int, CompileOutcome]:
        if self.progress is not None:
            self.progress.finished(outcome, number=self._numbers.pop(job, None))
        return job, outcome

    def _start_worker(self) -> _Worker:
        log = tempfile.TemporaryFile()
        process = subprocess.Popen([sys.executable, "-m", "harness.fit.worker", self.cache_dir],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        worker = _Worker(process, log)
        self._pool.append(worker)
        self._selector.register(process.stdout, selectors.EVENT_READ, worker)
        return worker

    def close(self) -> None:
        """Workers leave when their stdin closes; any still busy are killed."""
        for worker in self._pool:
            if worker.process.poll() is None:
                if worker.job is not None:
                    worker.process.kill()
                else:
                    worker.process.stdin.close()
        for worker in self._pool:
            try:
                worker.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=30)
            worker.log.close()
        self._pool.clear()
        self._selector.close()
        self._selector = selectors.DefaultSelector()

    def __enter__(self) -> CompilePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
