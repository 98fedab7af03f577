"""Runs the harness on one TPU worker so that it outlives the ssh session that started it.

    python -m launch.worker_run --pidfile P --stop_marker M --log_dir D -- python -m harness.train ...

launch/remote_script.py's launch script ends in this. The harness writes to files
(<log_dir>/stdout.log, stderr.log), never to the ssh session: when the launcher dies
(SIGKILL, a laptop closing) the session's pipes break, and a harness writing into them
would die of the broken pipe at its next line while its peers hang in a collective. This
process copies the files to its own stdout/stderr as they grow, stops copying (and keeps
waiting) when the session is gone, and prints one last line that launch/failures.py
parses, so a worker killed by a signal is reported as that signal rather than as ssh's 255:

    podharness-worker: harness ended: returncode=-9

Stop protocol with launch/remote_script.py's stop script: the stop script touches the stop
marker, then signals the pid in the pidfile. This process writes the harness's pid to
the pidfile, then looks for the marker: whichever order they run in, the harness is
stopped. Exit status: the harness's (128+N when killed by signal N); 143 if the stop
came before the harness started.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from launch.failures import ended_line, shell_status

POLL_S = 0.1
CHUNK = 1 << 16


class _Copier:
    """Copies what a log file gains to a stream; stops for good once the stream breaks."""

    def __init__(self, path: Path, stream: BinaryIO):
        self._file = open(path, "rb")
        self._stream: BinaryIO | None = stream

    def copy(self) -> None:
        data = self._file.read(CHUNK)
        while data:
            if self._stream is not None:
                try:
                    self._stream.write(data)
                    self._stream.flush()
                except (OSError, ValueError):
                    self._stream = None  # the ssh session is gone; the harness runs on
            data = self._file.read(CHUNK)

    def close(self) -> None:
        self._file.close()


def _say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"podharness: {message}", file=sys.stderr, flush=True)


def run(command: Sequence[str], pidfile: Path, stop_marker: Path, log_dir: Path) -> int:
    """Start `command` with its output in `log_dir`, relay it, and return its Popen code."""
    if stop_marker.exists():
        _say("stop requested before the harness started")
        return -signal.SIGTERM
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.log", log_dir / "stderr.log"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        harness = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    pidfile.write_text(f"{harness.pid}\n")
    if stop_marker.exists():
        harness.send_signal(signal.SIGTERM)
    copiers = [_Copier(out_path, sys.stdout.buffer), _Copier(err_path, sys.stderr.buffer)]
    try:
        while harness.poll() is None:
            for copier in copiers:
                copier.copy()
            time.sleep(POLL_S)
        for copier in copiers:
            copier.copy()
    finally:
        for copier in copiers:
            copier.close()
    with contextlib.suppress(OSError):
        if pidfile.read_text().strip() == str(harness.pid):
            pidfile.unlink()
    return harness.returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m launch.worker_run --pidfile P --stop_marker M --log_dir D -- COMMAND...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m launch.worker_run")
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--stop_marker", type=Path, required=True)
    parser.add_argument("--log_dir", type=Path, required=True)
    args = parser.parse_args(argv[:split])
    returncode = run(argv[split + 1:], args.pidfile, args.stop_marker, args.log_dir)
    with contextlib.suppress(OSError, ValueError):
        print(ended_line(returncode), file=sys.stderr, flush=True)
    return shell_status(returncode)


if __name__ == "__main__":
    sys.exit(main())
