"""Simulated hosts on threads of the test process, joined by a fake allgather: what the
callers of collectives.py do on every host, without JAX or other processes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

Result = TypeVar("Result")


class ThreadPod:
    """`hosts` threads meeting at a barrier with a timeout. `allgather_for(host)` stacks
    every host's row in host order, as JAX's process_allgather does; `calls[host]` records
    each gather's (dtype name, shape) in call order."""

    def __init__(self, hosts: int, timeout_s: float):
        self.hosts = hosts
        self.calls: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(hosts)]
        self._rows: list[np.ndarray | None] = [None] * hosts
        self._barrier = threading.Barrier(hosts, timeout=timeout_s)

    def allgather_for(self, host: int) -> Callable[[np.ndarray], np.ndarray]:
        def allgather(row: np.ndarray) -> np.ndarray:
            self.calls[host].append((row.dtype.name, row.shape))
            self._rows[host] = row
            self._barrier.wait()
            gathered = np.stack(self._rows)
            self._barrier.wait()  # nobody overwrites a row before every host has stacked it
            return gathered
        return allgather

    def run(self, host_main: Callable[[int], Result]) -> list[Result]:
        """`host_main(host)` on every host at once; each host's result. A host that raises
        breaks the barrier, so the others stop waiting now, not at the timeout; the first
        error that is not a broken barrier is raised."""
        def guarded(host: int) -> Result:
            try:
                return host_main(host)
            except BaseException:
                self._barrier.abort()
                raise

        with ThreadPoolExecutor(self.hosts) as pool:
            futures = [pool.submit(guarded, host) for host in range(self.hosts)]
        errors = [f.exception() for f in futures]
        causes = ([e for e in errors if e and not isinstance(e, threading.BrokenBarrierError)]
                  or [e for e in errors if e])
        if causes:
            raise causes[0]
        return [f.result() for f in futures]
