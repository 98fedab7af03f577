"""Ending a finished command without the interpreter's slow teardown.

After `main()` returns, everything a run writes is closed: checkpoints committed, the
writer thread joined, wandb finished. What is left is CPython freeing every module,
which takes about 0.5 s with jax, orbax and wandb loaded. So the console entry points
flush, run the atexit handlers (jax's `distributed.shutdown` barrier among them, which
the other hosts wait on), and leave with `os._exit`.

`atexit._run_exitfuncs` is private to CPython (3.11 here); this is the only module that
uses it, and tests/test_private_apis.py checks that it still runs the handlers once.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Callable, NoReturn


def exit_now(code: int) -> NoReturn:
    atexit._run_exitfuncs()  # CPython's own exit path runs these the same way
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_and_exit(main: Callable[[], int]) -> NoReturn:
    """What `harness-train`, `harness-fit` and `harness-preflight` run."""
    exit_now(main())
