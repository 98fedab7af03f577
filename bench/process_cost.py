"""Whole-process wall time and peak RSS of the main command, side by side.

    python -m bench.process_cost [--repeats 3]
    python -m bench.process_cost --tiny      # one round of 4-step runs: proves it runs

Runs `harness-train --config cpu-8-devices --num_train_steps 100 --batch_size 16` (8
fake CPU devices, checkpoints, hard examples, wandb offline) as a child process, in
variants alternated round by round: with a cold compilation cache (emptied before each
run), with a warm one, and without the XLA CPU compile-speed flags the CPU presets set;
and, in the same rounds, a bare process that only imports jax and runs one jitted op on
8 CPU devices (`BARE`), the floor any JAX command pays. Reported: each variant's time,
and the warm-cache run as a ratio to the bare process. Peak RSS is the child's own
(wait4 rusage).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench.common import child_env, median, python, run_measured

BARE = ("import jax; jax.config.update('jax_platforms', 'cpu'); jax.config.update('jax_num_cpu_devices', 8); "
        "import jax.numpy as jnp; print(jax.jit(lambda x: x.sum())(jnp.arange(8.0)))")
STEPS = 100
TINY = {"repeats": 1, "steps": 4}


def measure(repeats: int, steps: int = STEPS) -> dict:
    command = ["--config", "cpu-8-devices", "--num_train_steps", str(steps), "--batch_size", "16", "--overwrite"]
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "jax-cache"
        variants = {
            "cold_cache": ["--compilation_cache_dir", str(cache)],
            "warm_cache": ["--compilation_cache_dir", str(cache)],
            "cold_no_fast_compile_flags": ["--compilation_cache_dir", "", "--no_cpu_fast_compile"],
        }
        for _ in range(repeats):
            wall, rss, *_ = run_measured([python(), "-c", BARE], env=child_env())
            entry = results.setdefault("bare_jax", {"wall_s": [], "peak_rss_mb": []})
            entry["wall_s"].append(round(wall, 2))
            entry["peak_rss_mb"].append(round(rss, 1))
            for name, extra in variants.items():
                if name.startswith("cold"):
                    shutil.rmtree(cache, ignore_errors=True)
                argv = [python(), "-m", "harness.train", *command, *extra,
                        "--checkpoint_dir", str(root / "ckpt"), "--run_dir", str(root / "run")]
                wall, rss, *_ = run_measured(argv, env=child_env(WANDB_DIR=str(root / "wandb"),
                                                             WANDB_DATA_DIR=str(root / "wandb-data")))
                entry = results.setdefault(name, {"wall_s": [], "peak_rss_mb": []})
                entry["wall_s"].append(round(wall, 2))
                entry["peak_rss_mb"].append(round(rss, 1))
    summary = {name: {**r, "wall_s_median": median(r["wall_s"]), "peak_rss_mb_median": median(r["peak_rss_mb"])}
               for name, r in results.items()}
    ratios = [w / b for w, b in zip(results["warm_cache"]["wall_s"], results["bare_jax"]["wall_s"])]
    summary["warm_cache_over_bare_jax"] = {"ratios": [round(r, 2) for r in ratios], "median": round(median(ratios), 2)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="one round of short runs, to prove it runs")
    args = parser.parse_args()
    result = measure(**TINY) if args.tiny else measure(args.repeats)
    for name, value in result.items():
        print(f"{name}: {json.dumps(value)}")
    print("RESULT " + json.dumps({"process_cost": result}))


if __name__ == "__main__":
    main()
