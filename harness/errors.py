"""Errors that end a run with a clear one-line message instead of a traceback."""


class UsageError(Exception):
    """Bad input from the user (flags, presets, paths): the CLI prints it and exits 2.

    Raised before anything is written, so no existing checkpoint is touched.
    """

    exit_code = 2


class HostLostError(Exception):
    """Another host died or stopped answering. The CLI prints this and exits 3 at once
    (`os._exit`), since JAX's shutdown would otherwise wait for the dead peer."""

    exit_code = 3


class NonFiniteStateError(Exception):
    """The loss, the gradients or the state went nan/inf. The run stops without saving
    that state (so no good checkpoint is pruned for it); exit 1."""

    exit_code = 1
