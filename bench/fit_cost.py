"""What harness-fit costs, and what it finds: wall time and peak RSS of one `harness-fit`
process per model size and TPU target, with its verdict (the README's "Will it fit?"
table comes from this).

    python -m bench.fit_cost                                   # tiny, 1b, 8b x 5 targets
    python -m bench.fit_cost --models 1b --targets v5litepod-16 --search --max_compiles 6
    python -m bench.fit_cost --tiny     # the tiny model, 32x32 images, on v4-8: proves it runs

Each run is `harness-fit --config TARGET --model transformer --model_size SIZE` with
bfloat16 compute, full remat, FSDP over every chip of a slice and the preset's batch,
one after another (libtpu compiles use both cores). Peak RSS is the child's own (wait4
rusage). Prints a markdown table and a `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO_ROOT, child_env
from harness.config import load_preset
from harness.fit.topology import resolve
from harness.fit.units import format_bytes, format_duration

MODELS = ("tiny", "1b", "8b")
TARGETS = ("v4-8", "v4-32", "v5litepod-16", "v5litepod-256", "v6e-256")
SETTINGS = ("--model", "transformer", "--compute_dtype", "bfloat16", "--remat", "full")
TINY = {"models": "tiny", "targets": "v4-8", "extra": ("--image_size", "32", "--seq_len", "64")}


def fit_command(size: str, target: str, run_dir: Path, *, search: bool, max_compiles: int,
                extra: tuple[str, ...] = ()) -> list[str]:
    chips = resolve(load_preset(target).tpu.topology).devices_per_slice
    command = [sys.executable, "-m", "harness.fit", "--config", target, *SETTINGS, "--model_size", size,
               "--fsdp_devices", str(chips), "--run_dir", str(run_dir), *extra]
    return command + (["--max_compiles", str(max_compiles)] if search else ["--no_search"])


def run_measured(argv: list[str], timeout: float) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MB), exit code and stderr tail of one child process
    (harness-fit exits 1 when it does not fit: a result, not a failure)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                process.kill()
                process.wait()
                raise TimeoutError(f"{argv} ran past {timeout} s")
            time.sleep(0.05)
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace")[-1500:]
    return time.perf_counter() - started, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status), tail


def measure(size: str, target: str, *, search: bool, max_compiles: int, timeout: float,
            extra: tuple[str, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = fit_command(size, target, Path(tmp), search=search, max_compiles=max_compiles, extra=extra)
        wall, rss, code, stderr = run_measured(command, timeout)
        if code not in (0, 1):
            raise RuntimeError(f"{' '.join(command)} exited {code}:\n{stderr}")
        report = json.loads((Path(tmp) / "fit.json").read_text())
    memory, search_result = report["memory_per_device_bytes"], report["largest_batch"]
    return {
        "model": size, "target": target, "devices": report["target"]["devices"],
        "batch": report["global_batch_size"], "verdict": report["verdict"],
        "headroom_percent": report["headroom_percent"],
        "used_bytes": memory["peak"] if report["verdict"] == "FITS" else report["out_of_memory"]["required_bytes"],
        "hbm_bytes": memory["hbm"],
        "largest_batch": None if search_result is None else search_result["largest"],
        "largest_batch_proven": None if search_result is None else search_result["proven"],
        "step_time_bound_s": report["step_time_lower_bound"]["seconds"],
        "limited_by": report["step_time_lower_bound"]["limited_by"],
        "compile_s": report["compile_seconds"], "wall_s": wall, "peak_rss_mb": rss,
    }


def markdown(rows: list[dict]) -> str:
    searched = any(r["largest_batch_proven"] is not None for r in rows)
    header = ["model", "target", "chips", "batch", "per-chip memory (compiler) / HBM", "verdict",
              *(["largest batch"] if searched else []), "step time ≥", "harness-fit wall, peak RSS"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        headroom = "" if r["headroom_percent"] is None else f" ({r['headroom_percent']:+.1f}%)"
        cells = [r["model"], r["target"], str(r["devices"]), str(r["batch"]),
                 f"{format_bytes(r['used_bytes'])} / {format_bytes(r['hbm_bytes'])}", f"{r['verdict']}{headroom}"]
        if searched:
            cells.append("none" if r["largest_batch"] is None else
                         f"{r['largest_batch']}" + ("" if r["largest_batch_proven"] else " (unproven)"))
        cells += [f"{format_duration(r['step_time_bound_s'])} ({r['limited_by'].split(' ')[0]})",
                  f"{r['wall_s']:.0f} s, {r['peak_rss_mb'] / 1024:.2f} GB"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--search", action="store_true", help="also search for the largest batch")
    parser.add_argument("--max_compiles", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per harness-fit run")
    parser.add_argument("--tiny", action="store_true", help="one small compile, to prove it runs")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.targets, extra = TINY["models"], TINY["targets"], TINY["extra"]
    else:
        extra = ()
    rows = []
    for size in args.models.split(","):
        for target in args.targets.split(","):
            rows.append(measure(size, target, search=args.search, max_compiles=args.max_compiles,
                                timeout=args.timeout, extra=extra))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    print("RESULT " + json.dumps({"fit_cost": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
