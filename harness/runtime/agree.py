"""What every host must see the same: one verdict, and every host's small state.

`agreed_problem`: each host's problem (or none) goes to every host, and all of them act
on the same answer, so a check that fails on one host (a per-host local directory, a
full disk) stops every host at once with the same message instead of leaving the others
waiting in the next collective until a timeout. `gather_json`: every host's small JSON
value (e.g. its input pipeline position, for a checkpoint written by host 0). Both
travel through harness/runtime/collectives.py."""

from __future__ import annotations

import json
from typing import Any

import jax

from harness.runtime.collectives import allgather_bytes

MESSAGE_BYTES = 1024  # each host's message is cut to this (UTF-8 safe) before it travels
MAX_JSON_BYTES = 16 << 20


def agreed_problem(problem: str | None) -> str | None:
    """The first host's problem as `host i: ...` (naming how many others also had one),
    or None when no host has one; on one process, the problem as it is. Every host must
    call it."""
    if jax.process_count() == 1:
        return problem
    if problem is not None:
        problem = problem.encode("utf-8")[:MESSAGE_BYTES].decode("utf-8", "ignore")
    failed = [(host, text) for host, text in enumerate(gather_json(problem)) if text is not None]
    if not failed:
        return None
    host, text = failed[0]
    others = f" (and {len(failed) - 1} more host{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
    return f"host {host}: {text}{others}"


def gather_json(value: Any) -> list[Any]:
    """Every host's `value` (JSON-serializable), in host order, as JSON reads it back.
    Every host must call it; a value over `MAX_JSON_BYTES` on any host raises
    ValueError on every host."""
    blobs, _ = allgather_bytes(json.dumps(value, sort_keys=True).encode("utf-8"), max_payload_bytes=MAX_JSON_BYTES)
    oversized = [host for host, blob in enumerate(blobs) if blob is None]
    if oversized:
        raise ValueError(f"host {oversized[0]}'s value is over the {MAX_JSON_BYTES}-byte limit for a gather")
    return [json.loads(blob) for blob in blobs]
