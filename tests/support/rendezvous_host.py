"""One host's preflight rendezvous and nothing else: the roll call, then
jax.distributed, exactly as harness-preflight starts. tests/test_rollcall_hostile.py
runs it as the hosts of a real pod while strays connect to the roll-call port from
outside. Coordinates come from the HARNESS_* variables, as under launch.local:

    HARNESS_COORDINATOR_ADDRESS=127.0.0.1:PORT HARNESS_NUM_PROCESSES=2 HARNESS_PROCESS_ID=0 \\
        HARNESS_RUN_ID=local-1 python -m tests.support.rendezvous_host --initialization_timeout 60

Prints `JOINED <pod run id>: <the rendezvous cell>` and exits 0 when the pod assembled;
otherwise prints `NOT JOINED: ...` and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from harness.config import TrainConfig
from harness.preflight.rendezvous import join, pod_coordinates


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.rendezvous_host")
    parser.add_argument("--initialization_timeout", type=int, required=True)
    args = parser.parse_args()
    config = TrainConfig().replace(initialization_timeout=args.initialization_timeout)
    joined = join(config, pod_coordinates(config.distributed))
    cell = joined.observation
    if joined.joined:
        print(f"JOINED {joined.run_id}: {cell.status} {cell.value}", flush=True)
        return 0
    print(f"NOT JOINED: {cell.status} {cell.value}: {cell.detail}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
