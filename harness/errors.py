"""Errors that end a run with a clear one-line message instead of a traceback.

The exit codes are a restart contract (docs/failures.md): a scheduler may
restart on `EXIT_RESTARTABLE`, and must not on 1, 2 or 3, which would fail the same way again.
xpk's JobSets restart on 42 and on 127-255 (signals), and launch/gke generates that policy.
"""

import sys

# A lost host, a preemption, a stop that found the pod broken, or a checkpoint storage could
# not read just now: resume from the last checkpoint.
EXIT_RESTARTABLE = 42
# This host's accelerator is unusable (TPU held by another process, driver missing):
# restarting on the same host fails the same way; fix or replace the host.
EXIT_HOST_UNUSABLE = 3


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line for a one-line message: its first line, or its type."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


def error_line(err: BaseException, limit: int = 300) -> str:
    """What failed, in one line: `Type: first line`, or the type alone when the message
    is empty (storage, auth and runtime errors raise many types; the type says which)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {first_line(err, limit)}" if text else type(err).__name__


def report_error(prog: str, err: Exception) -> int:
    """Prints the one line a command ends with, `PROG: error: MESSAGE` (launchers and tests
    read it), and returns the error's exit code."""
    print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
    return err.exit_code


class UsageError(Exception):
    """Bad input from the user (flags, presets, paths): the CLI prints it and exits 2.

    Raised before anything is written, so no existing checkpoint is touched.
    """

    exit_code = 2


class TpuUnavailableError(Exception):
    """A TPU was expected (device files present, or `--platform tpu`) and did not come up.
    Never a silent fall back to the CPU: the CLI prints the reason and exits 3."""

    exit_code = EXIT_HOST_UNUSABLE


class HostLostError(Exception):
    """Another host died or stopped answering. The CLI prints this and exits 42 (restartable)
    at once (`os._exit`), since JAX's shutdown would otherwise wait for the dead peer."""

    exit_code = EXIT_RESTARTABLE


class NonFiniteStateError(Exception):
    """The loss, the gradients or the state went nan/inf. The run stops without saving
    that state (so no good checkpoint is pruned for it); exit 1."""

    exit_code = 1


class CheckpointUnreadableError(Exception):
    """A checkpoint could not be read, listed or marked for a reason that proves no damage
    (storage unavailable after its retries, a timeout, out of memory, permission denied).
    Every host stops with the same line and nothing is marked, renamed or deleted; exit 42
    (restartable): the next attempt may well read it (harness/runtime/damage.py)."""

    exit_code = EXIT_RESTARTABLE


class CheckpointSaveError(Exception):
    """A checkpoint save failed on this host (in orbax's background thread). The others
    are waiting for this host in the save's commit barrier, so the CLI prints this and
    exits 1 at once (`os._exit`), and the watchdog tells the others; the checkpoints
    already committed stay as they are."""

    exit_code = 1
