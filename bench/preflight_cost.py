"""Wall time of a whole `harness-preflight` on 1, 2 and 4 local hosts (8 fake CPU
devices in all: 1x8, 2x4, 4x2; the same (data=2, fsdp=4) mesh), every check on.

    python -m bench.preflight_cost [--repeats 2]
    python -m bench.preflight_cost --tiny      # 1 and 2 hosts, no dry run, one round: proves it runs

Each pod runs under launch.local, from the launcher's start to its exit (imports,
rendezvous, every check, the report). The first round starts with an empty compilation
cache (cold), later rounds reuse it (warm). Also reported: where the time went, the
slowest host's seconds per check from the run's preflight.json, and each run's verdict
(a FAIL, exit 1, is a result here: what a check found is in its `failures`; a pod
that ends without a report, 1 or 42, is recorded with its last lines on stderr).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import child_env, median, python, run_measured

HOSTS = (1, 2, 4)
DEVICES = 8
TINY = {"repeats": 1, "hosts": (1, 2),
        "flags": ("--checks", "consistency,devices,interconnect,storage", "--interconnect_sizes", "16384",
                  "--interconnect_repeats", "1")}


def measure(repeats: int, hosts: tuple[int, ...] = HOSTS, flags: tuple[str, ...] = ()) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for round_index in range(repeats):
            for count in hosts:
                run_dir = root / f"run-{count}-{round_index}"
                argv = [python(), "-m", "launch.local", "--num_processes", str(count), "--devices_per_process",
                        str(DEVICES // count), "--timeout", "600", "--", python(), "-m", "harness.preflight",
                        "--config", "local-2x4", "--cpu_devices", str(DEVICES // count), "--run_dir", str(run_dir),
                        "--checkpoint_dir", str(root / "ckpt"), "--compilation_cache_dir", str(root / "cache"),
                        *flags]
                run = run_measured(argv, env=child_env(WANDB_MODE="disabled"), timeout=900, ok_codes=(0, 1, 42))
                entry = results.setdefault(str(count), {"wall_s": [], "verdicts": [], "failures": [], "checks_s": []})
                entry["wall_s"].append(round(run.wall_s, 2))
                path = run_dir / "preflight.json"
                if not path.exists():  # the pod never got as far as a report: its last words
                    entry["verdicts"].append(f"no report (exit {run.exit_code})")
                    entry["failures"].append(" | ".join(run.stderr_tail.strip().splitlines()[-3:]))
                    continue
                report = json.loads(path.read_text())
                entry["verdicts"].append(report["verdict"])
                entry["failures"] += [f"{f['check']} on host {f['host']}: {f['value']}" for f in report["failures"]]
                entry["checks_s"].append({check["check"]: round(max(c["seconds"] for c in check["cells"]), 2)
                                          for check in report["checks"]})
    for entry in results.values():
        entry["cold_s"] = entry["wall_s"][0]
        if len(entry["wall_s"]) > 1:
            entry["warm_s_median"] = median(entry["wall_s"][1:])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="fewer hosts and checks, one round, to prove it runs")
    args = parser.parse_args()
    result = measure(**TINY) if args.tiny else measure(args.repeats)
    for hosts, value in result.items():
        print(f"preflight {hosts} host(s): {json.dumps(value)}")
    print("RESULT " + json.dumps({"preflight_cost": result}))


if __name__ == "__main__":
    main()
