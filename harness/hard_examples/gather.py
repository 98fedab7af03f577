"""Cross-host hard-example gathering: two phases, every host in the same order.

Phase 1 moves metadata only: each host's interval stats and its top-K candidates (no
pixels). Every host decodes all of them and runs the same deterministic round-robin
merge, so all hosts agree on the global winners without another message. Phase 2
moves pixels only for winners: each host materializes (resize, decode text) just its own
winners. A host therefore sends about K metadata rows plus at most K thumbnails,
whatever the number of hosts.

Each phase is one `allgather_bytes` (harness/runtime/collectives.py: a fixed-width first
round with every host's length, and a second round, padded to a width from a fixed
ladder, only for payloads that did not fit). A payload longer than `max_payload_bytes`, or
one that does not decode (`decode_payload` raises nothing but `MessageError`, whatever
the bytes), is reported by host index and skipped; the other hosts' entries are still
merged and logged. Since every host sees the same bytes, they all make the same skip
decisions and the same merge (which fails on all hosts or none), so every host goes on
to phase 2's collectives, in the same order. A host makes examples only for winners it
holds, so bytes that decoded but did not match its buffer can't make it raise alone
between the collectives; every host decodes phase 2 too, so every host names the same
host that sent no example for a winner and ends with the same result.

Tests: `.venv/bin/python -m pytest -q tests/test_gather_hostile.py` (in one process,
simulated hosts) and `tests/test_multihost_hard_examples.py` (real processes).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable, Sequence

from harness.hard_examples.codec import CandidatePayload, ExamplePayload, decode_payload, encode_payload
from harness.hard_examples.entry import Candidate, HardExample
from harness.hard_examples.merge import GlobalStats, merge_round_robin, merge_stats
from harness.hard_examples.tracker import HardExampleTracker
from harness.runtime.collectives import RowGather, allgather_bytes, allgather_rows
from harness.runtime.messages import MessageError

DEFAULT_MAX_PAYLOAD_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class GatherResult:
    """What process 0 logs for one interval (other hosts get the same minus examples)."""

    step: int
    examples: list[HardExample]          # merged winners with images, loss descending
    stats: GlobalStats
    bad_hosts: dict[int, str]            # host -> why its payload was skipped (-1: the merge)
    bytes_sent: dict[str, int]           # this host's padded bytes per phase


def _decode_all(
    blobs: Sequence[bytes | None], kind: type, step: int, max_payload_bytes: int, max_entries: int,
) -> tuple[list, dict[int, str]]:
    """Decoded payloads (None for skipped hosts) and why each skipped host was skipped."""
    decoded, bad = [], {}
    for host, blob in enumerate(blobs):
        source = f"payload from host {host}"
        try:
            if blob is None:
                raise MessageError(f"{source}: larger than the {max_payload_bytes}-byte limit")
            payload = decode_payload(blob, kind, max_bytes=max_payload_bytes, max_entries=max_entries,
                                     source=source)
            if payload.host != host or payload.step != step:
                raise MessageError(
                    f"{source}: claims host {payload.host} step {payload.step}, expected host {host} step {step}"
                )
        except MessageError as err:
            decoded.append(None)
            bad[host] = str(err)
            continue
        decoded.append(payload)
    return decoded, bad


def gather_hard_examples(
    tracker: HardExampleTracker,
    *,
    step: int,
    k: int,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    allgather: RowGather = allgather_rows,
    encode_candidates: Callable[[CandidatePayload], bytes] = encode_payload,
) -> GatherResult:
    """Runs both phases; call it on every host at the same step.

    `encode_candidates` exists so tests can make one host send damaged bytes.
    """
    host = tracker.host
    own = CandidatePayload(host=host, step=step, stats=tracker.stats(), candidates=tracker.candidates()[:k])
    blobs, width_1 = allgather_bytes(encode_candidates(own), max_payload_bytes=max_payload_bytes,
                                     allgather=allgather)
    payloads, bad = _decode_all(blobs, CandidatePayload, step, max_payload_bytes, max_entries=max(k, 1))
    try:
        winners: list[Candidate] = merge_round_robin([p.candidates if p else () for p in payloads], k)
    except ValueError as err:
        # Every host sees the same payloads, so every host lands here: log nothing this
        # interval, but still make phase 2's collectives so the hosts stay in step.
        winners = []
        bad[-1] = f"merge refused this interval's candidates: {err}"
    stats = merge_stats([p.stats for p in payloads if p is not None], winners)

    # Only what this host holds: bytes that decoded but were damaged on the way out
    # could name other samples, and materialize() would raise between collectives.
    held = {c.sample_id for c in own.candidates}
    mine = [c.sample_id for c in winners if c.host == host and c.sample_id in held]
    examples_payload = ExamplePayload(host=host, step=step, examples=tracker.materialize(mine))
    blobs_2, width_2 = allgather_bytes(encode_payload(examples_payload),
                                       max_payload_bytes=max_payload_bytes, allgather=allgather)
    # Every host decodes every payload, so every host holds the same result (the same
    # entries and the same skipped hosts) and the writer needs no host check here.
    decoded_2, bad_2 = _decode_all(blobs_2, ExamplePayload, step, max_payload_bytes, max_entries=max(k, 1))
    bad.update({h: why for h, why in bad_2.items() if h not in bad})
    by_key = {(e.host, e.sample_id): e for p in decoded_2 if p is not None for e in p.examples}
    examples: list[HardExample] = [by_key[(c.host, c.sample_id)] for c in winners if (c.host, c.sample_id) in by_key]
    unsent = Counter(c.host for c in winners if (c.host, c.sample_id) not in by_key and c.host not in bad)
    for h, count in sorted(unsent.items()):
        bad[h] = f"payload from host {h}: no example for {count} of its winners"
    return GatherResult(step=step, examples=examples, stats=stats, bad_hosts=bad,
                        bytes_sent={"candidates": width_1, "examples": width_2})
