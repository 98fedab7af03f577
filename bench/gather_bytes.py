"""One host of a real multi-process gather, for bench/hard_examples.py: fills a tracker
with a few mock batches, gathers, and prints the bytes it sent per phase.

    python -m launch.local --num_processes 4 --devices_per_process 1 -- python -m bench.gather_bytes
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from harness.runtime import distributed
from harness.config import DataConfig
from harness.mock.data import MockDataset
from harness.hard_examples.gather import gather_hard_examples
from harness.hard_examples.tracker import HardExampleTracker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    distributed.initialize("auto")
    host, hosts = jax.process_index(), jax.process_count()
    dataset = MockDataset(DataConfig(batch_size=32 * hosts, image_size=128), seed=0,
                          process_index=host, process_count=hosts)
    tracker = HardExampleTracker(args.k, dataset.tokenizer, host=host)
    rng = np.random.default_rng(host)
    for step in range(args.steps):
        batch = dataset.batch_at(step)
        tracker.update(step, batch, rng.gamma(2.0, 1.5, batch.size), batch.sample_id)
    result = gather_hard_examples(tracker, step=args.steps, k=args.k)
    print("BYTES " + json.dumps({"host": host, "bytes_sent": result.bytes_sent,
                                 "winners_here": sum(e.host == host for e in result.examples) if host == 0 else None}),
          flush=True)


if __name__ == "__main__":
    main()
