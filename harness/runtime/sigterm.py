"""SIGTERM seen at once by a thread, without taking it away from JAX.

Python runs signal handlers on the main thread only, between bytecodes, so a main thread
blocked in a collective never runs one. And once `jax.distributed` is up, JAX's
preemption notifier owns SIGTERM at the C level (`std::signal` in XLA's
preemption_notifier.cc): its handler only sets a flag that a JAX thread polls every
second to start the agreed-step protocol (`reached_preemption_sync_point`).

`SigtermListener` installs Python's handler with a wakeup fd (`signal.set_wakeup_fd`):
Python's C-level handler writes the signal number there, and a listener thread wakes on
it at once, whatever the main thread is doing, and calls back. The C handler that was
installed before (JAX's) is read with `sigaction(2)` and called from that thread for
every SIGTERM, so JAX still hears each one; `close()` puts it back. Linux only (glibc's
`struct sigaction` layout, the same on x86_64 and aarch64). The wakeup fd is
process-wide: nothing else in the harness may set one while a listener runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading
from collections.abc import Callable
from typing import Any

_SIG_DFL, _SIG_IGN = 0, 1
_SA_SIGINFO = 4


class _SigAction(ctypes.Structure):
    """glibc's `struct sigaction` on Linux (x86_64, aarch64)."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def current_action(signum: int) -> _SigAction:
    """The kernel's disposition of `signum` (whoever installed it: Python, JAX, nobody)."""
    action = _SigAction()
    if _libc().sigaction(signum, None, ctypes.byref(action)) != 0:
        raise OSError(ctypes.get_errno(), f"sigaction({signum}) failed")
    return action


def foreign_handler(signum: int) -> Callable[[], None] | None:
    """A call that runs the C handler installed for `signum` by someone other than Python
    (JAX), as a delivery of the signal would; None when there is none."""
    if signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return None  # a Python handler: Python's own C trampoline, not a foreign one
    action = current_action(signum)
    if action.handler in (None, _SIG_DFL, _SIG_IGN):
        return None
    if action.flags & _SA_SIGINFO:
        three_args = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(action.handler)
        return lambda: three_args(signum, None, None)
    one_arg = ctypes.CFUNCTYPE(None, ctypes.c_int)(action.handler)
    return lambda: one_arg(signum)


class SigtermListener:
    """Calls `on_sigterm` on its own thread for every SIGTERM, then the foreign C handler
    that was there before, if any. Start and close it from the main thread."""

    def __init__(self, on_sigterm: Callable[[], None]):
        self._on_sigterm = on_sigterm
        self._saved_action = current_action(signal.SIGTERM)
        self._chain = foreign_handler(signal.SIGTERM)
        self._previous_python = signal.getsignal(signal.SIGTERM)
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closing = threading.Event()
        self._previous_wakeup_fd = -1
        self._thread = threading.Thread(target=self._listen, name="sigterm-listener", daemon=True)

    @property
    def chains_to_foreign_handler(self) -> bool:
        return self._chain is not None

    def start(self) -> SigtermListener:
        self._thread.start()
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the thread does the work
        return self

    def close(self) -> None:
        """Restores SIGTERM's handler and the wakeup fd as they were; stops the thread."""
        signal.signal(signal.SIGTERM, self._previous_python or signal.SIG_DFL)
        if self._chain is not None:
            _libc().sigaction(signal.SIGTERM, ctypes.byref(self._saved_action), None)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        self._closing.set()
        self._thread.join(timeout=2.0)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _listen(self) -> None:
        while not self._closing.is_set():
            ready, _, _ = select.select([self._read_fd], [], [], 0.2)
            if not ready:
                continue
            try:
                received = os.read(self._read_fd, 512)
            except BlockingIOError:
                continue
            for signum in received:
                if signum == signal.SIGTERM:
                    self._on_sigterm()
                    if self._chain is not None:
                        self._chain()
