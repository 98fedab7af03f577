"""SIGTERM seen at once by a thread, and passed on to JAX's preemption notifier only.

Python runs signal handlers on the main thread only, between bytecodes, so a main thread
blocked in a collective never runs one. `SigtermListener` installs Python's handler with
a wakeup fd (`signal.set_wakeup_fd`): Python's C-level handler writes the signal number
there, and a listener thread wakes on it at once, whatever the main thread is doing.

Who else wants SIGTERM (checked against the pinned jax 0.10.2 and libtpu 0.0.42.1):
- `jax.distributed.initialize` starts the preemption sync manager, whose notifier
  installs a plain one-argument handler with `std::signal` (XLA's preemption_notifier.cc:
  it only sets a flag that a JAX thread polls every second). That is the handler the
  agreed-step protocol (`reached_preemption_sync_point`) needs to hear every SIGTERM.
- libtpu, when JAX loads it, installs absl's failure signal handler (`SA_SIGINFO`) for
  SIGTERM, unless a handler is already there (after `jax.distributed.initialize` it
  leaves JAX's in place). It prints a stack trace and re-raises: the process dies.
  Called by hand with a made-up (NULL) siginfo, it crashes with SIGSEGV.

So the one C handler ever chained to is JAX's notifier, recorded right after
`jax.distributed.initialize` installed it (`record_jax_preemption_notifier`, called by
harness/runtime/distributed.py), and called exactly as the kernel calls a handler
without `SA_SIGINFO`: with the signal number alone. Any other foreign handler (libtpu's
on a single-host TPU VM) is replaced while the listener runs and put back by `close()`.
Linux only (glibc's `struct sigaction` layout, the same on x86_64 and aarch64). This is
the only module that calls C through ctypes; tests/test_private_apis.py checks the layout
against what Python itself installs. The wakeup fd is process-wide: nothing else in the
harness may set one while a listener runs.
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
    """The kernel's disposition of `signum` (whoever installed it: Python, JAX, libtpu, nobody)."""
    action = _SigAction()
    if _libc().sigaction(signum, None, ctypes.byref(action)) != 0:
        raise OSError(ctypes.get_errno(), f"sigaction({signum}) failed")
    return action


def takes_siginfo(action: _SigAction) -> bool:
    return bool(action.flags & _SA_SIGINFO)


class JaxPreemptionNotifier:
    """JAX's SIGTERM handler, as `jax.distributed.initialize` installed it."""

    def __init__(self, address: int):
        self.address = address
        self._call = ctypes.CFUNCTYPE(None, ctypes.c_int)(address)

    def notify(self) -> None:
        """What a delivery of SIGTERM does to a handler installed without SA_SIGINFO."""
        self._call(signal.SIGTERM)


_jax_notifier: JaxPreemptionNotifier | None = None


def record_jax_preemption_notifier(before: _SigAction) -> JaxPreemptionNotifier | None:
    """Called right after `jax.distributed.initialize`, with SIGTERM's action from just
    before it: a new one-argument handler is JAX's notifier. None when JAX installed none
    (the preemption service is off) or one this module cannot call as the kernel would."""
    global _jax_notifier
    after = current_action(signal.SIGTERM)
    if after.handler in (None, _SIG_DFL, _SIG_IGN) or after.handler == before.handler or takes_siginfo(after):
        _jax_notifier = None
    else:
        _jax_notifier = JaxPreemptionNotifier(after.handler)
    return _jax_notifier


def jax_preemption_notifier() -> JaxPreemptionNotifier | None:
    return _jax_notifier


class SigtermListener:
    """Calls `on_sigterm` on its own thread for every SIGTERM, then JAX's preemption
    notifier if `jax.distributed` installed one. Start and close it from the main thread."""

    def __init__(self, on_sigterm: Callable[[], None], *, notifier: JaxPreemptionNotifier | None = None):
        self._on_sigterm = on_sigterm
        self._notifier = notifier
        self._saved_action = current_action(signal.SIGTERM)
        self._previous_python = signal.getsignal(signal.SIGTERM)
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closing = threading.Event()
        self._previous_wakeup_fd = -1
        self._thread = threading.Thread(target=self._listen, name="sigterm-listener", daemon=True)

    @property
    def notifies_jax(self) -> bool:
        return self._notifier is not None

    def start(self) -> SigtermListener:
        self._thread.start()
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the thread does the work
        return self

    def close(self) -> None:
        """Restores SIGTERM's handler (a foreign C one included) and the wakeup fd as they
        were; stops the thread."""
        signal.signal(signal.SIGTERM, self._previous_python or signal.SIG_DFL)  # Python's own record
        _libc().sigaction(signal.SIGTERM, ctypes.byref(self._saved_action), None)  # the kernel's, exactly
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
                    if self._notifier is not None:
                        self._notifier.notify()
