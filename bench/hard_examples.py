"""Hard-example costs, measured side by side in one run.

    python -m bench.hard_examples [--steps 30 --repeats 2]
    python -m bench.hard_examples --tiny      # small sizes, one round: proves it runs

1. Step time with tracking on / off: the real training run at batch 256 with two 224x224x3
   cameras on 8 fake CPU devices, blocks alternating on/off; a gather every 10 steps.
2. Process 0's phase-1 work for 1024 simulated hosts x K=50: decode every host's
   candidate payload (real msgpack bytes) + round-robin merge + global stats.
3. Bytes each host sends per interval (both phases, padded as the allgather moves them:
   harness/runtime/collectives.py's fixed first round, then the rest in a power-of-two
   rung): measured in real multi-process runs (H = 2, 4 via launch.local) and computed
   with the real codec for simulated H up to 1024, beside the longest payloads unpadded.

--tiny: batch 16 of 64x64 images for 4 steps (a gather every 2), 64 simulated hosts, one
real run of 2 hosts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from bench.common import REPO_ROOT, child_env, median, trainer_seconds_per_step
from harness.hard_examples.codec import CandidatePayload, ExamplePayload, decode_payload, encode_payload
from harness.hard_examples.entry import Candidate, HardExample, IntervalStats
from harness.hard_examples.merge import merge_round_robin, merge_stats
from harness.runtime.collectives import FIRST_PAYLOAD_BYTES, FIRST_ROUND_BYTES, padded_width

K = 50
THUMB_SHAPE = (64, 128, 3)  # two 64x64 camera thumbnails side by side (the default)
FULL = {"tracking": {"batch_size": 256, "image_size": 224, "interval": 10, "warmup": 5},
        "merge_hosts": 1024, "simulated_hosts": [2, 4, 16, 64, 256, 1024], "real_hosts": [2, 4]}
TINY = {"tracking": {"batch_size": 16, "image_size": 64, "interval": 2, "warmup": 2},
        "merge_hosts": 64, "simulated_hosts": [2, 64], "real_hosts": [2], "steps": 4, "repeats": 1}


def tracking_on_off(steps: int, repeats: int, *, batch_size: int, image_size: int, interval: int,
                    warmup: int) -> dict:
    from harness.runtime.devices import configure_devices

    configure_devices(cpu_devices=8)
    from harness.config import TrainConfig

    def block(track: bool) -> float:
        config = TrainConfig().replace(batch_size=batch_size, image_size=image_size, fsdp_devices=8,
                                       num_train_steps=steps, track_hard_examples=track,
                                       hard_example_log_interval=interval, save_interval=10**6, use_wandb=False,
                                       log_interval=10**6)
        return trainer_seconds_per_step(config, warmup=warmup)

    on, off = [], []
    for _ in range(repeats):
        off.append(block(False))
        on.append(block(True))
    ratios = [a / b for a, b in zip(on, off)]
    return {"step_ms_tracking_off": [round(1e3 * x, 1) for x in off],
            "step_ms_tracking_on": [round(1e3 * x, 1) for x in on],
            "ratio_on_off_median": round(median(ratios), 3)}


def _stats(host: int, rng: np.random.Generator) -> IntervalStats:
    losses = rng.gamma(2.0, 1.0, 800)
    return IntervalStats(host=host, first_step=0, last_step=49, num_samples=800, loss_sum=float(losses.sum()),
                         loss_max=float(losses.max()), loss_min=float(losses.min()),
                         num_high_loss=int((losses > 4).sum()), num_nonfinite=0, threshold=None)


def _candidate_payloads(hosts: int, rng: np.random.Generator) -> list[bytes]:
    blobs = []
    for host in range(hosts):
        losses = np.sort(rng.gamma(2.0, 1.5, K))[::-1]
        candidates = [Candidate(host * 10_000 + i, float(l), int(rng.integers(50)), host) for i, l in enumerate(losses)]
        stats = _stats(host, rng)
        stats = IntervalStats(**{**{f: getattr(stats, f) for f in stats.__slots__}, "threshold": float(losses[-1])})
        blobs.append(encode_payload(CandidatePayload(host=host, step=50, stats=stats, candidates=candidates)))
    return blobs


def merge_time(hosts: int = 1024, repeats: int = 5) -> dict:
    rng = np.random.default_rng(0)
    blobs = _candidate_payloads(hosts, rng)
    decode_s, merge_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        payloads = [decode_payload(b, CandidatePayload, max_entries=K) for b in blobs]
        t1 = time.perf_counter()
        winners = merge_round_robin([p.candidates for p in payloads], K)
        merge_stats([p.stats for p in payloads], winners)
        merge_s.append(time.perf_counter() - t1)
        decode_s.append(t1 - t0)
    return {"hosts": hosts, "k": K, "merge_ms": round(1e3 * median(merge_s), 2),
            "decode_all_payloads_ms": round(1e3 * median(decode_s), 1),
            "candidate_payload_bytes": len(blobs[0])}


def sent_per_host(lengths: list[int]) -> int:
    """Bytes each host sends to gather payloads of these lengths: the first round, and
    a second one in the rung that holds the longest rest (collectives.allgather_bytes)."""
    rest = max(lengths) - FIRST_PAYLOAD_BYTES
    return FIRST_ROUND_BYTES + (padded_width(rest) if rest > 0 else 0)


def simulated_bytes_per_host(host_counts: list[int]) -> dict:
    """Bytes each host sends (phase 1 + phase 2) with the real codec, and the longest
    payloads unpadded; winners drawn by the real merge from random per-host losses."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, THUMB_SHAPE, dtype=np.uint8)
    text = "move right 10cm and move forward 5cm"
    sent, longest = {}, {}
    for hosts in host_counts:
        blobs = _candidate_payloads(hosts, rng)
        payloads = [decode_payload(b, CandidatePayload, max_entries=K) for b in blobs]
        winners = merge_round_robin([p.candidates for p in payloads], K)
        per_host = {h: [] for h in range(hosts)}
        for w in winners:
            per_host[w.host].append(HardExample(w.sample_id, w.loss, w.step, w.host, text,
                                                "pick up the red block", 9, image))
        examples = [len(encode_payload(ExamplePayload(host=h, step=50, examples=e))) for h, e in per_host.items()]
        sent[hosts] = sent_per_host([len(b) for b in blobs]) + sent_per_host(examples)
        longest[hosts] = max(len(b) for b in blobs) + max(examples)
    return {"entry_image_bytes": int(np.prod(THUMB_SHAPE)),
            "k_entries_of_pixels": K * int(np.prod(THUMB_SHAPE)),
            "bytes_sent_per_host_by_H": sent, "longest_payloads_by_H": longest}


def real_bytes_per_host(hosts: int) -> dict:
    """Bytes sent per host in a real run of `hosts` processes (bench/gather_bytes.py)."""
    command = [sys.executable, "-m", "launch.local", "--num_processes", str(hosts), "--devices_per_process", "1",
               "--timeout", "300", "--", sys.executable, "-m", "bench.gather_bytes", "--k", str(K)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=360)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    rows = [json.loads(line.split("BYTES ", 1)[1]) for line in result.stdout.splitlines() if "BYTES " in line]
    return {str(r["host"]): r["bytes_sent"] for r in sorted(rows, key=lambda r: r["host"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="small sizes, one round, to prove it runs")
    args = parser.parse_args()
    sizes = TINY if args.tiny else {**FULL, "steps": args.steps, "repeats": args.repeats}
    result = {
        "merge": merge_time(sizes["merge_hosts"]),
        "bytes_simulated": simulated_bytes_per_host(sizes["simulated_hosts"]),
        "bytes_real": {str(h): real_bytes_per_host(h) for h in sizes["real_hosts"]},
        "tracking": tracking_on_off(sizes["steps"], sizes["repeats"], **sizes["tracking"]),
    }
    for name, value in result.items():
        print(f"{name}: {json.dumps(value)}")
    print("RESULT " + json.dumps({"hard_examples": result}))


if __name__ == "__main__":
    main()
