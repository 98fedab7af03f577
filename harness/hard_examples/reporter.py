"""Hard examples in the training loop: feed the tracker, and gather when it is time.

Every host calls `observe` for each finished step and `end_of_step` after it; when
`itstime` says so, every host takes part in the gather (`gather.py`) and gets the same
result, which the loop hands to the run's outputs (harness/outputs/run_outputs.py) to
print and write. The result is named by the steps done (harness/runtime/schedule.py).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable, Literal

import jax
import numpy as np

from harness.mock.data import Batch
from harness.hard_examples.codec import CandidatePayload, decode_payload, encode_payload
from harness.hard_examples.gather import DEFAULT_MAX_PAYLOAD_BYTES, GatherResult, gather_hard_examples
from harness.hard_examples.tracker import HardExampleTracker
from harness.runtime.collectives import allgather_bytes
from harness.runtime.messages import MessageError, Record, array, convert, text
from harness.runtime.schedule import itstime

STATE_VERSION = 2  # 2: payloads in the frames of harness/runtime/messages.py
MAX_HOSTS = 1 << 16


class SavedState(Record):
    """What `checkpoint_state` returns, as read back from the checkpoint's JSON."""

    version: Literal[STATE_VERSION]
    payloads: array(text(4 * DEFAULT_MAX_PAYLOAD_BYTES // 3 + 4) | None, MAX_HOSTS)  # base64, one per host


class HardExampleReporter:
    """Owns this host's tracker and decides, identically on every host, when to gather."""

    def __init__(
        self,
        tracker: HardExampleTracker,
        *,
        interval: int,
        k: int,
        total_steps: int,
    ):
        self.tracker = tracker
        self.interval = interval
        self.k = k
        self.total_steps = total_steps
        self.intervals_logged = 0  # a count, not the results: those hold every interval's images

    def observe(self, step: int, batch: Batch, per_sample_loss: np.ndarray, sample_id: np.ndarray) -> None:
        self.tracker.update(step, batch, per_sample_loss, sample_id)

    def end_of_step(self, step: int) -> GatherResult | None:
        """After step `step`: every `interval` steps done, and after the last step, the
        hosts gather (a collective) and the tracker starts a new interval."""
        done = step + 1
        if not itstime(done, self.interval, last=self.total_steps):
            return None
        result = gather_hard_examples(self.tracker, step=done, k=self.k)
        self.tracker.reset()
        self.intervals_logged += 1
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
            payloads = convert(saved, SavedState, source=where).payloads
            if len(payloads) != hosts:
                raise MessageError(f"{where}: saved for {len(payloads)} hosts, running on {hosts}")
            encoded = payloads[host]
            if encoded is None:
                raise MessageError(f"{where}: missing")
            payload = decode_payload(base64.b64decode(encoded, validate=True), CandidatePayload, source=where)
            if payload.host != host or payload.step != step:
                raise MessageError(f"{where}: claims host {payload.host} step {payload.step}")
            self.tracker.restore(payload.stats, payload.candidates, read_records)
        except (ValueError, binascii.Error) as err:  # MessageError included
            self.tracker.reset()
            return f"{err}; the current hard-example interval starts empty"
        return None
