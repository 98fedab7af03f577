"""Errors that end a run with a clear one-line message instead of a traceback."""


class UsageError(Exception):
    """Bad input from the user (flags, presets, paths): the CLI prints it and exits 2.

    Raised before anything is written, so no existing checkpoint is touched.
    """

    exit_code = 2
