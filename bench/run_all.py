"""Every benchmark, each in its own process (each sets its own device count):

    python -m bench.run_all          (or: make bench)     every benchmark at full size
    python -m bench.run_all --tiny   every benchmark at its tiny size (seconds each)

The benchmarks are the scripts in bench/ (bench/common.py's `benchmarks()`), so a new
one runs here without being listed. Full size is each script's default, except
fit_cost: its default is 15 TPU compiles (~25 min here), so `make bench` compiles one
row, the 1B transformer on v5litepod-16 that `make fit` checks. Prints each
benchmark's own lines, then every RESULT as JSON and a table of each one's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import REPO_ROOT, benchmarks, child_env, tiny_args

FULL_ARGS = {"bench.fit_cost": ("--models", "1b", "--targets", "v5litepod-16")}
# The training loop's own console output, which the benchmarks' training runs print.
TRAINING_NOISE = ("Step", "  ", "=", "Starting", "Training", "Summary", "MOCK", "Config", "Resuming")
TIMEOUT_S = 1800


def run_one(module: str, args: tuple[str, ...]) -> tuple[int, float, dict, str]:
    """Exit code, wall seconds, its RESULT and its stderr tail."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    wall = time.perf_counter() - started
    result: dict = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result.update(json.loads(line[len("RESULT "):]))
        elif not line.startswith(TRAINING_NOISE):
            print(line, flush=True)
    return done.returncode, wall, result, done.stderr[-3000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="every benchmark at its tiny size")
    tiny = parser.parse_args().tiny
    started = time.perf_counter()
    results: dict = {}
    walls: dict[str, float] = {}
    for module in benchmarks():
        args = tiny_args(module) if tiny else FULL_ARGS.get(module, ())
        print(f"== {module} {' '.join(args)}".rstrip(), flush=True)
        code, walls[module], result, stderr = run_one(module, args)
        print(f"== {module}: {walls[module]:.0f} s", flush=True)
        if code != 0:
            print(stderr, file=sys.stderr)
            print(f"bench.run_all: {module} exited {code}", file=sys.stderr)
            return code
        results.update(result)
    print(json.dumps(results, indent=1))
    print("| benchmark | wall |\n|---|---|")
    for module, wall in walls.items():
        print(f"| {module} | {wall:.0f} s |")
    print(f"| all ({'tiny' if tiny else 'full size'}) | {time.perf_counter() - started:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
