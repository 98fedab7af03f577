"""Streaming a supervised process's output: each line to the launcher's terminal as it
arrives, prefixed with the process's label (`[worker 3] `), and unprefixed to its log.

Why whole lines under one lock: sixteen workers write at once, and a line cut by
another's would be unreadable. Why a broken terminal is ignored: the relay must keep
reading, or the child blocks on a full pipe (`launch.tpu_pod ... | head` must not stop
a pod). An observer may show a line in its own words instead (launch.tpu_pod's
provisioning progress, launch/provision_progress.py); the log keeps it either way.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import IO, TextIO


class LineSink:
    """Writes whole prefixed lines to one stream, and optionally unprefixed to a log file.

    One lock is shared by every sink of a supervisor so lines from different processes
    never interleave mid-line.
    """

    def __init__(self, prefix: str, stream: TextIO, lock: threading.Lock, log: TextIO | None):
        self._prefix = prefix
        self._stream = stream
        self._lock = lock
        self._log = log

    def write_line(self, line: str, *, relay: bool = True) -> None:
        """The line to the log, and to the stream too when `relay`."""
        if not line.endswith("\n"):
            line += "\n"
        with self._lock:
            with contextlib.suppress(OSError, ValueError):
                if relay:
                    self._stream.write(self._prefix + line)
                    self._stream.flush()
            if self._log is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._log.write(line)
                    self._log.flush()


def relay_lines(pipe: IO[bytes], sink: LineSink, observe: Callable[[str], bool]) -> None:
    """Copy lines from a child's pipe to the sink until EOF, keeping a final partial line.

    `observe` sees each line first and returns True when it has shown the line itself;
    such a line goes to the log only.
    """
    with pipe:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            sink.write_line(line, relay=not observe(line))


def start_relays(label: str, pipes: tuple[IO[bytes], IO[bytes]], streams: tuple[TextIO, TextIO],
                 lock: threading.Lock, log: TextIO | None, observe: Callable[[str], bool]) -> list[threading.Thread]:
    """One daemon thread per pipe (stdout, stderr), each relaying to its stream and the log."""
    relays = [
        threading.Thread(target=relay_lines, args=(pipe, LineSink(f"[{label}] ", stream, lock, log), observe),
                         name=f"relay {label}", daemon=True)
        for pipe, stream in zip(pipes, streams)
    ]
    for relay in relays:
        relay.start()
    return relays
