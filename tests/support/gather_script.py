"""Rounds of the cross-host hard-example gather, some with one host at fault, for
tests/test_multihost_hard_examples.py to check against the oracles. Run it under the
launcher (it is a test helper, not a tool):

    python -m launch.local --num_processes 3 --devices_per_process 1 --timeout 120 -- \\
        python -m tests.support.gather_script

Each round every host resets its tracker, feeds it a few steps of small mock batches
with synthetic losses (a pure function of round, host and step, in shuffled row order,
coarse enough to tie), then calls `gather_hard_examples`. The rounds:

- clean: nothing wrong.
- garbage: host 1 sends bytes that are not a payload.
- impostor: host 1 sends a well-formed payload that claims to come from host 0.
- empty: host 1 feeds nothing, so its payload is valid but empty.
- oversize_candidates: host 2's phase-1 bytes (its real payload, padded) are over the
  round's `max_payload_bytes`.
- oversize_examples: host 2 makes large thumbnails, so only its phase-2 payload is over
  the limit.

After each round every host prints one line, `ROUND {json}`, with what it fed and what
its gather returned (only host 0's has entries). A round that hung or desynchronized
the collectives would stop the lines, or the process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from harness.runtime import distributed
from harness.config import DataConfig
from harness.mock.data import MockDataset
from harness.hard_examples.codec import CandidatePayload, encode_payload
from harness.hard_examples.gather import DEFAULT_MAX_PAYLOAD_BYTES, gather_hard_examples
from harness.hard_examples.tracker import HardExampleTracker

ROUNDS = ("clean", "garbage", "clean", "impostor", "empty", "oversize_candidates", "oversize_examples", "clean")
K = 5
LOCAL_BATCH = 4
STEPS_PER_ROUND = 3
FAULTY_HOST = {"garbage": 1, "impostor": 1, "empty": 1, "oversize_candidates": 2, "oversize_examples": 2}
SMALL_LIMIT = 4096  # bytes: every payload of these rounds fits, except the faulty host's
THUMBNAIL = (4, 4)
LARGE_THUMBNAIL = (48, 48)  # one example is 48 * 48 * 3 = 6912 bytes > SMALL_LIMIT
GARBAGE = b"\x93garbage, not a payload"
SEED = 7
HIGH_LOSS_THRESHOLD = 4.0


def synthetic_losses(round_index: int, host: int, step: int, n: int) -> np.ndarray:
    """Losses in steps of 0.25 (so ties happen), host 2 far above the others: without the
    round-robin it would take every slot."""
    rng = np.random.default_rng([SEED, round_index, host, step])
    losses = rng.exponential(1.0, n) + (3.0 if host == 2 else 0.0)
    return np.round(losses * 4.0) / 4.0


def send_garbage(payload: CandidatePayload) -> bytes:
    return GARBAGE


def send_as_host_0(payload: CandidatePayload) -> bytes:
    """A valid payload with every host field set to 0."""
    return encode_payload(CandidatePayload(
        host=0, step=payload.step, stats=dataclasses.replace(payload.stats, host=0),
        candidates=[dataclasses.replace(c, host=0) for c in payload.candidates],
    ))


def send_padded_past_the_limit(payload: CandidatePayload) -> bytes:
    """The real payload, then more than the round's limit of zeros (never decoded: the
    size check comes first)."""
    return encode_payload(payload) + bytes(2 * SMALL_LIMIT)


def run_round(round_index: int, name: str, host: int, hosts: int, dataset: MockDataset) -> dict:
    faulty = FAULTY_HOST.get(name) == host
    resize = LARGE_THUMBNAIL if name == "oversize_examples" and faulty else THUMBNAIL
    tracker = HardExampleTracker(K, dataset.tokenizer, host=host, resize_hw=resize,
                                 high_loss_threshold=HIGH_LOSS_THRESHOLD)
    first_step = round_index * STEPS_PER_ROUND
    fed = []
    if not (name == "empty" and faulty):
        order_rng = np.random.default_rng([SEED, round_index, host, 99])
        for step in range(first_step, first_step + STEPS_PER_ROUND):
            batch = dataset.batch_at(step)
            losses = synthetic_losses(round_index, host, step, batch.size)
            order = order_rng.permutation(batch.size)
            tracker.update(step, batch, losses[order], batch.sample_id[order])
            fed += [[int(s), float(l), step] for s, l in zip(batch.sample_id, losses)]

    encoders = {"garbage": send_garbage, "impostor": send_as_host_0,
                "oversize_candidates": send_padded_past_the_limit}
    encode = encoders.get(name, encode_payload) if faulty else encode_payload
    limit = SMALL_LIMIT if name.startswith("oversize") else DEFAULT_MAX_PAYLOAD_BYTES
    result = gather_hard_examples(tracker, step=first_step + STEPS_PER_ROUND, k=K,
                                  max_payload_bytes=limit, encode_candidates=encode)
    return {
        "round": round_index,
        "name": name,
        "host": host,
        "hosts": hosts,
        "k": K,
        "limit": limit,
        "fed": fed,
        "steps": list(range(first_step, first_step + STEPS_PER_ROUND)) if fed else [],
        "bad_hosts": {str(h): why for h, why in sorted(result.bad_hosts.items())},
        "stats": vars(result.stats),
        "entries": [
            {"sample_id": e.sample_id, "loss": e.loss, "step": e.step, "host": e.host,
             "image_shape": list(e.image.shape)}
            for e in result.examples
        ],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.gather_script")
    parser.add_argument("--rounds", default=",".join(ROUNDS), help="comma-separated round names")
    args = parser.parse_args(argv)
    names = args.rounds.split(",")
    unknown = sorted(set(names) - set(ROUNDS))
    if unknown:
        parser.error(f"unknown rounds {unknown}")
    distributed.initialize("auto", heartbeat_timeout=10, initialization_timeout=60)

    import jax

    host, hosts = jax.process_index(), jax.process_count()
    if hosts < 3:
        parser.error(f"needs at least 3 processes (hosts 1 and 2 are made faulty), got {hosts}")
    spec = DataConfig(batch_size=LOCAL_BATCH * hosts, image_size=8, num_cameras=1, seq_len=32)
    dataset = MockDataset(spec, SEED, host, hosts)
    for round_index, name in enumerate(names):
        print("ROUND " + json.dumps(run_round(round_index, name, host, hosts, dataset)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
