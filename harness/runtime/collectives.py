"""Every gather of host-local values across hosts, and the one caller of JAX's
`process_allgather`.

JAX compiles one gather program for each (shape, dtype) it is handed, and on a TPU pod
each one is a compile, made in lockstep on every host. Payloads whose size changes from
call to call (hard examples, JSON, reports) would compile a new program almost every
time. So every row travels as bytes padded to a width from a fixed ladder (powers of
two from `FIRST_ROUND_BYTES` up), and a whole run compiles at most one program per rung
it uses, whatever its length.

`allgather_bytes` moves variable-length payloads in a fixed-width first round that
carries each host's length beside the first bytes of its payload; only when a payload
is longer does a second round (a rung wide enough for the longest rest) carry the rest.
Every host sees the same first round, so every host makes the same second round or none.

On one process nothing is compiled or sent: the rows come back as they are.

Tests: `.venv/bin/python -m pytest -q tests/test_collectives.py`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

FIRST_ROUND_BYTES = 1024          # the narrowest rung, and the width of the first round
LENGTH_BYTES = 8                  # each first-round row starts with its payload's length
FIRST_PAYLOAD_BYTES = FIRST_ROUND_BYTES - LENGTH_BYTES

RowGather = Callable[[np.ndarray], np.ndarray]


def padded_width(nbytes: int) -> int:
    """The rung a row of `nbytes` bytes travels in: the smallest power of two that holds
    it, and never less than `FIRST_ROUND_BYTES`."""
    return max(FIRST_ROUND_BYTES, 1 << max(nbytes - 1, 0).bit_length())


def allgather_rows(row: np.ndarray) -> np.ndarray:
    """Every host's `row`, as an array of shape (hosts, row.size) in host order.

    Every host must call it with the same shape and dtype (it is one collective). The
    row travels as uint8 padded to its rung, so different rows share programs."""
    flat = np.ascontiguousarray(row).reshape(-1)
    hosts = jax.process_count()
    if hosts == 1:
        return flat.reshape(1, -1)
    data = flat.view(np.uint8)
    padded = np.zeros(padded_width(data.size), dtype=np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(hosts, -1)
    return np.ascontiguousarray(gathered[:, : data.size]).view(flat.dtype).reshape(hosts, -1)


def allgather_ints(values: Sequence[int]) -> np.ndarray:
    """Every host's `values` (the same count on every host) as int64, (hosts, len)."""
    return allgather_rows(np.asarray(values, dtype=np.int64))


def all_hosts_true(ok: bool) -> bool:
    """True only if `ok` on every host. One collective; every host must call it."""
    return bool(allgather_ints([int(ok)]).all())


def allgather_bytes(
    data: bytes, *, max_payload_bytes: int, allgather: RowGather = allgather_rows
) -> tuple[list[bytes | None], int]:
    """Every host's bytes in host order (None where a host's payload was longer than
    `max_payload_bytes`), and the padded bytes this host sent. One collective when every
    payload fits in the first round, two otherwise; every host must call it.

    `allgather` stands in for `allgather_rows` where tests simulate hosts in one process.
    """
    own = data if len(data) <= max_payload_bytes else b""
    first = np.zeros(FIRST_ROUND_BYTES, dtype=np.uint8)
    first[:LENGTH_BYTES] = np.frombuffer(len(data).to_bytes(LENGTH_BYTES, "little"), dtype=np.uint8)
    head = own[:FIRST_PAYLOAD_BYTES]
    first[LENGTH_BYTES : LENGTH_BYTES + len(head)] = np.frombuffer(head, dtype=np.uint8)
    rows = allgather(first)
    lengths = [int.from_bytes(bytes(row[:LENGTH_BYTES]), "little") for row in rows]
    fits = [length <= max_payload_bytes for length in lengths]
    rest = max((length - FIRST_PAYLOAD_BYTES for length, ok in zip(lengths, fits) if ok), default=0)
    sent = FIRST_ROUND_BYTES
    tails: np.ndarray | None = None
    if rest > 0:
        width = padded_width(rest)
        second = np.zeros(width, dtype=np.uint8)
        tail = own[FIRST_PAYLOAD_BYTES:]
        second[: len(tail)] = np.frombuffer(tail, dtype=np.uint8)
        tails = allgather(second)
        sent += width
    received: list[bytes | None] = []
    for host, (length, ok) in enumerate(zip(lengths, fits)):
        if not ok:
            received.append(None)
            continue
        blob = bytes(rows[host][LENGTH_BYTES : LENGTH_BYTES + min(length, FIRST_PAYLOAD_BYTES)])
        if length > FIRST_PAYLOAD_BYTES and tails is not None:
            blob += bytes(tails[host][: length - FIRST_PAYLOAD_BYTES])
        received.append(blob)
    return received, sent


def gather_global(array: jax.Array) -> np.ndarray:
    """A global (sharded, possibly multi-host) array as one numpy array on every host.
    One program per distinct global shape; every host must call it."""
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def join_barrier(name: str) -> None:
    """Reach the barrier `name` that the other hosts are waiting in: a host whose orbax
    restore raised joins the barrier that closes the others' restore (its name from
    orbax_internals.restore_barrier_name), so all can go on to agree on a verdict. JAX's
    device barrier has no timeout, so a host lost meanwhile is the watchdog's to name
    (tests/test_resume_faults.py kills and freezes one mid-restore)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
