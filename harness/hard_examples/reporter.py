"""Hard examples in the training loop: feed the tracker, gather at each interval, log.

Every host calls `observe` for each finished step and `end_of_step` after it; at an
interval boundary every host takes part in the gather (`gather.py`) and process 0 prints
the seed-style block, writes `<run_dir>/hard_examples/step_<N>.json` (entries without
pixels) and hands the result to any extra sinks (pictures, wandb). `N` is the number of
steps completed, as for checkpoints.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from harness.mock.data import Batch
from harness.hard_examples.codec import CandidatePayload, PayloadError, decode_payload, encode_payload
from harness.hard_examples.gather import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    GatherResult,
    allgather_bytes,
    gather_hard_examples,
)
from harness.hard_examples.tracker import HardExampleTracker
from harness.outputs.sinks import Console

PRINTED_ENTRIES = 5
STATE_VERSION = 1

HardExampleSink = Callable[[GatherResult], None]


def format_block(result: GatherResult, *, printed: int = PRINTED_ENTRIES) -> list[str]:
    """The console block, seed style, with the host of each entry."""
    stats = result.stats
    threshold = "n/a" if stats.threshold is None else f"{stats.threshold:.4f}"
    lines = [
        f"  Hard examples: {len(result.examples)} entries, threshold={threshold}, "
        f"total_samples={stats.num_samples}"
    ]
    for rank, entry in enumerate(result.examples[:printed], start=1):
        lines.append(
            f"    #{rank}: loss={entry.loss:.4f}, step={entry.step}, host={entry.host}, "
            f"lang_action={entry.lang_action} (len={entry.token_len})..."
        )
    if len(result.examples) > printed:
        lines.append(f"    ... {len(result.examples) - printed} more")
    for host, why in sorted(result.bad_hosts.items()):
        lines.append(f"  WARNING: {'skipped host ' + str(host) if host >= 0 else 'no entries'}: {why}")
    return lines


def result_to_json(result: GatherResult) -> dict:
    """Everything about an interval except pixels (the image shape stays)."""
    return {
        "step": result.step,
        "stats": dataclasses.asdict(result.stats),
        "bad_hosts": {str(h): why for h, why in sorted(result.bad_hosts.items())},
        "entries": [
            {
                "rank": rank, "sample_id": e.sample_id, "loss": e.loss, "step": e.step,
                "host": e.host, "lang_action": e.lang_action, "prompt": e.prompt,
                "token_len": e.token_len, "image_shape": list(e.image.shape),
            }
            for rank, e in enumerate(result.examples, start=1)
        ],
    }


class HardExampleReporter:
    """Owns this host's tracker and decides, identically on every host, when to gather."""

    def __init__(
        self,
        tracker: HardExampleTracker,
        *,
        interval: int,
        k: int,
        run_dir: Path,
        console: Console,
        sinks: Sequence[HardExampleSink] = (),
    ):
        self.tracker = tracker
        self.interval = interval
        self.k = k
        self.out_dir = run_dir / "hard_examples"
        self.console = console
        self.sinks = list(sinks)
        self.intervals_logged = 0  # a count, not the results: those hold every interval's images

    def observe(self, step: int, batch: Batch, per_sample_loss: np.ndarray, sample_id: np.ndarray) -> None:
        self.tracker.update(step, batch, per_sample_loss, sample_id)

    def end_of_step(self, step: int, last_step: int) -> GatherResult | None:
        """Gathers after every `interval` completed steps and after the last step."""
        completed = step + 1
        if completed % self.interval and step != last_step:
            return None
        result = gather_hard_examples(self.tracker, step=completed, k=self.k)
        self.tracker.reset()
        self.intervals_logged += 1
        if self.console.is_primary:
            for line in format_block(result):
                self.console.print(line)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"step_{completed}.json"
            path.write_text(json.dumps(result_to_json(result), indent=1) + "\n")
            for sink in self.sinks:
                sink(result)
        return result

    def checkpoint_state(self, step: int) -> dict[str, Any]:
        """Every host's tracker state (stats and top-K metadata, no pixels), for the
        checkpoint's JSON. A collective: every host calls it at the same step."""
        own = CandidatePayload(host=self.tracker.host, step=step, stats=self.tracker.stats(),
                               candidates=self.tracker.candidates())
        blobs, _ = allgather_bytes(encode_payload(own), max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
        return {
            "version": STATE_VERSION,
            "payloads": [base64.b64encode(b).decode("ascii") if b else None for b in blobs],
        }

    def restore_state(self, saved: Any, *, step: int, read_records: Callable[[np.ndarray], Batch]) -> str | None:
        """Puts this host's saved interval back (pixels read again by record key). The
        checkpoint is untrusted input: anything off leaves the tracker empty and returns
        a warning instead of failing the resume."""
        host, hosts = self.tracker.host, jax.process_count()
        where = f"checkpoint step {step}: hard-example state of host {host}"
        if saved is None:
            return None
        try:
            if not isinstance(saved, dict) or saved.get("version") != STATE_VERSION:
                raise PayloadError(f"{where}: unknown format")
            payloads = saved.get("payloads")
            if not isinstance(payloads, list) or len(payloads) != hosts:
                count = len(payloads) if isinstance(payloads, list) else "?"
                raise PayloadError(f"{where}: saved for {count} hosts, running on {hosts}")
            encoded = payloads[host]
            if not isinstance(encoded, str) or len(encoded) > 2 * DEFAULT_MAX_PAYLOAD_BYTES:
                raise PayloadError(f"{where}: missing or oversized")
            payload = decode_payload(base64.b64decode(encoded, validate=True), CandidatePayload, source=where)
            if payload.host != host or payload.step != step:
                raise PayloadError(f"{where}: claims host {payload.host} step {payload.step}")
            self.tracker.restore(payload.stats, payload.candidates, read_records)
        except (PayloadError, ValueError, binascii.Error) as err:
            self.tracker.reset()
            return f"{err}; the current hard-example interval starts empty"
        return None
