"""What every host must see the same: one verdict, and every host's small state.

`agreed_problem`: each host's problem (or none) goes to every host, and all of them act
on the same answer, so a check that fails on one host (a per-host local directory, a
full disk) stops every host at once with the same message instead of leaving the others
waiting in the next collective until a timeout. `gather_json`: every host's small JSON
value (e.g. its input pipeline position, for a checkpoint written by host 0)."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

MESSAGE_BYTES = 1024  # each host's message is cut to this (UTF-8 safe) before it travels


def _encode(problem: str | None) -> np.ndarray:
    row = np.zeros(MESSAGE_BYTES + 1, dtype=np.uint8)
    if problem is not None:
        data = problem.encode("utf-8")[:MESSAGE_BYTES].decode("utf-8", "ignore").encode("utf-8")
        row[0] = 1
        row[1 : 1 + len(data)] = np.frombuffer(data, dtype=np.uint8)
    return row


def _decode(row: np.ndarray) -> str | None:
    if not row[0]:
        return None
    return bytes(row[1:]).rstrip(b"\0").decode("utf-8", "replace")


def agreed_problem(problem: str | None) -> str | None:
    """The first host's problem as `host i: ...` (naming how many others also had one),
    or None when no host has one. One allgather; every host must call it."""
    if jax.process_count() == 1:
        return problem
    from jax.experimental import multihost_utils

    rows = np.asarray(multihost_utils.process_allgather(_encode(problem))).reshape(jax.process_count(), -1)
    problems = [(host, _decode(row)) for host, row in enumerate(rows)]
    failed = [(host, text) for host, text in problems if text is not None]
    if not failed:
        return None
    host, text = failed[0]
    others = f" (and {len(failed) - 1} more host{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
    return f"host {host}: {text}{others}"


def gather_json(value: Any) -> list[Any]:
    """Every host's `value` (JSON-serializable), in host order. Two allgathers (the
    lengths, then the padded bytes); every host must call it."""
    data = json.dumps(value, sort_keys=True).encode("utf-8")
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    hosts = jax.process_count()
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray([len(data)], np.int64))).reshape(hosts)
    row = np.zeros(int(lengths.max()), dtype=np.uint8)
    row[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(row)).reshape(hosts, -1)
    return [json.loads(bytes(rows[h, : lengths[h]]).decode("utf-8")) for h in range(hosts)]
