"""All benchmarks, each in its own process (each sets its own device count):

    python -m bench.run_all        (or: make bench)

Prints every benchmark's measurements and a closing table of the ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import REPO_ROOT, child_env

BENCHMARKS = ["bench.step_overhead", "bench.process_cost", "bench.hard_examples", "bench.checkpoint_stall",
              "bench.preflight_cost"]


def main() -> int:
    results: dict = {}
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        done = subprocess.run([sys.executable, "-m", module], cwd=REPO_ROOT, env=child_env(),
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                results.update(json.loads(line[len("RESULT "):]))
            elif not line.startswith(("Step", "  ", "=", "Starting", "Training", "Summary", "MOCK", "Config")):
                print(line)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
