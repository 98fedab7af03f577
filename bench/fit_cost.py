"""What harness-fit costs, and what it finds: wall time, CPU time, peak RSS and compiles
of one `harness-fit` process per model size and TPU target, with its verdict (the
tables in docs/fit.md come from this).

    python -m bench.fit_cost                                   # tiny, 1b, 8b x 5 targets
    python -m bench.fit_cost --models 1b --targets v5litepod-16 --search
    python -m bench.fit_cost --make_fit --baseline 0fac077     # `make fit` before/after, side by side
    python -m bench.fit_cost --tiny     # the tiny model, 32x32 images, on v4-8: proves it runs
    python -m bench.fit_cost --make_fit --floor   # and the least CPU a proven answer costs

Each run is `harness-fit --config TARGET --model transformer --model_size SIZE` with
bfloat16 compute, full remat, FSDP over every chip of a slice and the preset's batch,
one after another, each with a fresh compile cache (cold) and, with `--warm`, once more
on that cache. `--make_fit` runs the Makefile's `fit` command instead. `--baseline REF`
runs the same commands from a `git worktree` of REF too (flags REF's harness-fit lacks
are left out), alternating with the current code, `--rounds` times: these machines are
shared, so only numbers taken side by side compare. Wall and CPU seconds and peak RSS
are the child's (wait4 rusage; CPU includes its compile workers, RSS is the largest
process). Prints a markdown table and a `RESULT {json}` line.

`--floor` then compiles, each alone in one process on a fresh cache with no search, the
requested batch and the largest batch the search found: the two fits a proven answer
cannot do without. Their CPU seconds summed over this machine's cores is the least wall
time any search can take here, however it places its probes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from bench.common import REPO_ROOT, child_env
from harness.config import load_preset
from harness.fit.topology import resolve
from harness.fit.units import format_duration
from harness.runtime.memory import format_bytes

MODELS = ("tiny", "1b", "8b")
TARGETS = ("v4-8", "v4-32", "v5litepod-16", "v5litepod-256", "v6e-256")
SETTINGS = ("--model", "transformer", "--compute_dtype", "bfloat16", "--remat", "full")
MAKE_FIT = ("--config", "v5litepod-16", "--model", "transformer", "--model_size", "1b", "--compute_dtype", "bfloat16",
            "--remat", "full", "--fsdp_devices", "16")   # the Makefile's `fit` target
TINY = {"models": "tiny", "targets": "v4-8", "extra": ("--image_size", "32", "--seq_len", "64")}


def fit_args(size: str, target: str, *, search: bool, max_compiles: int | None, extra: tuple[str, ...] = ()) -> list[str]:
    chips = resolve(load_preset(target).tpu.topology).devices_per_slice
    args = ["--config", target, *SETTINGS, "--model_size", size, "--fsdp_devices", str(chips), *extra]
    if not search:
        return args + ["--no_search"]
    return args + ([] if max_compiles is None else ["--max_compiles", str(max_compiles)])


def run_measured(argv: list[str], cwd: Path, timeout: float) -> tuple[float, float, float, int, str]:
    """Wall seconds, CPU seconds, peak RSS (MB), exit code and stderr tail of one child
    (harness-fit exits 1 when it does not fit: a result, not a failure)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        # Its own process group: a timeout stops its compile workers too, not only harness-fit.
        process = subprocess.Popen(argv, cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise TimeoutError(f"{argv} ran past {timeout} s")
            time.sleep(0.05)
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace")[-1500:]
    cpu = usage.ru_utime + usage.ru_stime
    return time.perf_counter() - started, cpu, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status), tail


def compiles_of(report: dict) -> tuple[int, int]:
    """(compiles run, compiles answered from the cache); fit.json before the cache
    listed only the search's probes."""
    if report.get("compiles"):
        return report["compiles"]["compiled"], report["compiles"]["from_cache"]
    search = report["largest_batch"]
    return (1 if search is None else len(search["probes"])), 0


def measure(code: str, tree: Path, args: list[str], *, cache_dir: Path | None, timeout: float) -> dict:
    """One harness-fit run from `tree`; `cache_dir` None: the code has no cache flag."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "harness.fit", *args, "--run_dir", run_dir]
        if cache_dir is not None:
            command += ["--fit_cache_dir", str(cache_dir)]
        wall, cpu, rss, exit_code, stderr = run_measured(command, tree, timeout)
        if exit_code not in (0, 1):
            raise RuntimeError(f"{' '.join(command)} exited {exit_code}:\n{stderr}")
        report = json.loads((Path(run_dir) / "fit.json").read_text())
    memory, search = report["memory_per_device_bytes"], report["largest_batch"]
    compiled, cached = compiles_of(report)
    workers = (report.get("compiles") or {}).get("worker_peak_rss_mb") or {}
    return {
        "code": code, "model": report["model"].get("size") or report["model"]["name"],
        "target": report["target"]["product"], "devices": report["target"]["devices"],
        "batch": report["global_batch_size"], "verdict": report["verdict"],
        "headroom_percent": report["headroom_percent"],
        "used_bytes": memory["peak"] if report["verdict"] == "FITS" else report["out_of_memory"]["required_bytes"],
        "hbm_bytes": memory["hbm"],
        "largest_batch": None if search is None else search["largest"],
        "smallest_failing": None if search is None else search["smallest_failing"],
        "largest_batch_proven": None if search is None else search["proven"],
        "step_time_bound_s": report["step_time_lower_bound"]["seconds"],
        "limited_by": report["step_time_lower_bound"]["limited_by"],
        "compiles": compiled, "from_cache": cached, "compile_s": report["compile_seconds"],
        "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "worker_peak_rss_mb": sum(workers.values()),
    }


def floor_rows(command: list[str], searched: dict, stack: contextlib.ExitStack, *, timeout: float) -> list[dict]:
    """The requested batch and the answer `searched` found, each compiled alone and cold;
    prints the least wall time their CPU allows on this machine's cores."""
    if searched["largest_batch"] is None:
        return []
    rows = []
    for batch in (searched["batch"], searched["largest_batch"]):
        cache = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        alone = [*command, "--no_search", "--compile_workers", "1", "--batch_size", str(batch)]
        rows.append(measure(f"now, batch {batch} alone", REPO_ROOT, alone, cache_dir=cache, timeout=timeout))
        print(json.dumps(rows[-1]), flush=True)
    cores = len(os.sched_getaffinity(0))
    cpu = sum(row["cpu_s"] for row in rows)
    print(f"FLOOR the two fits alone: {cpu:.0f} s of CPU; on {cores} cores no search can take under "
          f"{cpu / cores:.0f} s wall", flush=True)
    return rows


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A detached checkout of `ref` beside this one, removed afterwards; `python -m
    harness.fit` run inside it imports its own harness (the current directory comes first)."""
    path = Path(tempfile.mkdtemp(prefix="podharness-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=REPO_ROOT, check=True,
                   capture_output=True, timeout=120)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO_ROOT, capture_output=True,
                       timeout=120)


def markdown(rows: list[dict]) -> str:
    searched = any(r["largest_batch_proven"] is not None for r in rows)
    header = ["model", "target", "chips", "batch", "per-chip memory (compiler) / HBM", "verdict",
              *(["largest batch"] if searched else []), "step time ≥", "compiles (cached)",
              "harness-fit wall, CPU, peak RSS", "code"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        headroom = "" if r["headroom_percent"] is None else f" ({r['headroom_percent']:+.1f}%)"
        cells = [r["model"], r["target"], str(r["devices"]), str(r["batch"]),
                 f"{format_bytes(r['used_bytes'])} / {format_bytes(r['hbm_bytes'])}", f"{r['verdict']}{headroom}"]
        if searched:
            if r["largest_batch_proven"] is None:
                cells.append("not searched")
            else:
                cells.append("none" if r["largest_batch"] is None else
                             f"{r['largest_batch']}" + ("" if r["largest_batch_proven"] else " (unproven)"))
        workers = f" + workers {r['worker_peak_rss_mb'] / 1024:.2f} GB" if r["worker_peak_rss_mb"] else ""
        cells += [f"{format_duration(r['step_time_bound_s'])} ({r['limited_by'].split(' ')[0]})",
                  f"{r['compiles']} ({r['from_cache']})",
                  f"{r['wall_s']:.0f} s, {r['cpu_s']:.0f} s, {r['peak_rss_mb'] / 1024:.2f} GB{workers}", r["code"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--search", action="store_true", help="also search for the largest batch")
    parser.add_argument("--max_compiles", type=int, default=None, help="default: harness-fit's own")
    parser.add_argument("--make_fit", action="store_true", help="the Makefile's `fit` command instead")
    parser.add_argument("--warm", action="store_true", help="run each command again on its cache")
    parser.add_argument("--baseline", default="", metavar="REF", help="also run the code at this git ref")
    parser.add_argument("--rounds", type=int, default=1, help="alternations with --baseline")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per harness-fit run")
    parser.add_argument("--tiny", action="store_true", help="one small compile, to prove it runs")
    parser.add_argument("--floor", action="store_true",
                        help="also compile the requested and the largest batch alone: the least a proven answer costs")
    args = parser.parse_args()
    extra: tuple[str, ...] = ()
    if args.tiny:
        args.models, args.targets, extra = TINY["models"], TINY["targets"], TINY["extra"]
    if args.make_fit:
        commands = [list(MAKE_FIT)]
    else:
        commands = [fit_args(size, target, search=args.search, max_compiles=args.max_compiles, extra=extra)
                    for size in args.models.split(",") for target in args.targets.split(",")]
    rows = []
    with contextlib.ExitStack() as stack:
        baseline = stack.enter_context(worktree(args.baseline)) if args.baseline else None
        for _ in range(args.rounds):
            for command in commands:
                if baseline is not None:
                    rows.append(measure(f"{args.baseline} (before)", baseline, command, cache_dir=None,
                                        timeout=args.timeout))
                    print(json.dumps(rows[-1]), flush=True)
                cache = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                for label in ("cold", "warm")[:1 + args.warm]:
                    rows.append(measure(f"now, {label} cache", REPO_ROOT, command, cache_dir=cache,
                                        timeout=args.timeout))
                    print(json.dumps(rows[-1]), flush=True)
                if args.floor:
                    rows += floor_rows(command, rows[-1], stack, timeout=args.timeout)
    print(markdown(rows))
    print("RESULT " + json.dumps({"fit_cost": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
