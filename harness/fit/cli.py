"""`harness-fit`: will this training step fit on that TPU pod, with which settings, and
what will it cost? No TPU needed.

    harness-fit --config v5litepod-256 --model transformer --model_size 3b --batch_size 1024 --num_slices 2
    harness-fit --config v5litepod-16 --model transformer --model_size 1b --targets v5litepod-16,v6e-8,v4-32
    harness-fit --config v5litepod-16 --model transformer --model_size 1b --search settings

Takes every harness-train flag (same presets, same precedence); the target is the
preset's `topology` (or `--topology v5litepod-16`, `--topology v5e:4x4`), or each of
`--targets`. Says on stderr each compile as it starts and ends (a live bar on a
terminal), then prints a table and writes `fit.json` and a chart to `--run_dir`.
Compiles run in worker processes and their outcomes are kept on disk, so asking again
costs no compile. Exit 0: it fits (a target, a setting does); 1: it does not (the
compiler's numbers are in the report); 2: bad input, one line on stderr, nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from harness.config import TrainConfig
from harness.config.flags import config_from_args
from harness.errors import UsageError, report_error
from harness.fit.economics import DEFAULT_MFU, DEFAULT_MTBF_HOURS, Assumptions
from harness.fit.plan import StorageThroughput, throughput_from_preflight
from harness.fit.topology import parse_targets
from harness.train.cli import build_parser as build_train_parser

if TYPE_CHECKING:
    from harness.fit.compare import Comparison
    from harness.fit.progress import CompileProgress
    from harness.fit.report import FitReport
    from harness.fit.settings import SettingsSearch

PROG = "harness-fit"


def build_parser() -> argparse.ArgumentParser:
    parser = build_train_parser()
    parser.prog, parser.description = PROG, __doc__.splitlines()[0]
    parser.add_argument("--search", choices=("batch", "settings"), default="batch",
                        help="batch (default): also the largest batch that fits; settings: the fastest setting "
                             "over FSDP size, remat policy and batch (harness/fit/settings.py)")
    parser.add_argument("--no_search", dest="search", action="store_const", const="none",
                        help="skip the largest-batch search (one compile instead of several)")
    parser.add_argument("--max_compiles", type=int, default=16, metavar="INT",
                        help="compiles the largest-batch search may spend (default 16; most are refusals, "
                             "seconds each)")
    parser.add_argument("--compile_workers", type=int, default=0, metavar="INT",
                        help="processes compiling side by side (default 0: this process's cores, at most 4; "
                             "1 compiles in this process)")
    parser.add_argument("--fit_cache_dir", default=None, metavar="DIR",
                        help="where compile outcomes are kept, so the same question compiles nothing "
                             "(default $XDG_CACHE_HOME/podharness/fit, ~/.cache/podharness/fit; '' for none)")
    parser.add_argument("--compile_timeout", type=float, default=3600.0, metavar="S",
                        help="seconds one compile may take before harness-fit gives up (default 3600)")
    parser.add_argument("--targets", default="", metavar="A,B,...",
                        help="compare these TPU products (v5litepod-16,v6e-8,...): one row each, cheapest first")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, metavar="F",
                        help=f"model FLOPs utilization that turns the step-time bound into an estimate "
                             f"(default {DEFAULT_MFU}: harness/fit/economics.py says why)")
    parser.add_argument("--price_per_chip_hour", type=float, default=None, metavar="USD",
                        help="price per chip-hour instead of the dated list-price table (harness/fit/economics.py)")
    parser.add_argument("--mtbf_hours", type=float, default=DEFAULT_MTBF_HOURS, metavar="H",
                        help=f"the slice's mean time between failures, for the checkpoint interval "
                             f"(default {DEFAULT_MTBF_HOURS:g}, a placeholder for your own record)")
    parser.add_argument("--storage_mbps", type=float, default=None, metavar="MB/S",
                        help="checkpoint write throughput per host (1 MB = 10^6 B), for the save time")
    parser.add_argument("--preflight_json", default=None, metavar="PATH",
                        help="take the write throughput from harness-preflight's report instead (its slowest host)")
    return parser


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """harness-fit's own flags (the rest are training's config)."""

    search: str                 # batch | settings | none
    max_compiles: int
    compile_workers: int        # 0: auto (harness/fit/pool.py:default_workers)
    fit_cache_dir: str | None   # None: harness/fit/cache.py:default_cache_dir
    compile_timeout: float
    targets: list[str]          # empty: the config's own target only
    preset: str | None          # --config, for the harness-train command a settings search prints
    assumptions: Assumptions


def _assumptions(mfu: float, price: float | None, mtbf_hours: float, storage_mbps: float | None,
                 preflight_json: str | None) -> Assumptions:
    if storage_mbps is not None and preflight_json is not None:
        raise UsageError("give the write throughput once: --storage_mbps or --preflight_json, not both")
    if storage_mbps is not None and storage_mbps <= 0:
        raise UsageError(f"--storage_mbps must be positive, got {storage_mbps:g}")
    throughput = (StorageThroughput(storage_mbps, "--storage_mbps") if storage_mbps is not None
                  else throughput_from_preflight(preflight_json) if preflight_json is not None else None)
    return Assumptions(mfu=mfu, price_per_chip_hour=price, mtbf_hours=mtbf_hours, throughput=throughput)


def parse(argv: Sequence[str]) -> tuple[TrainConfig, FitOptions]:
    args = vars(build_parser().parse_args(argv))
    assumptions = _assumptions(args.pop("mfu"), args.pop("price_per_chip_hour"), args.pop("mtbf_hours"),
                               args.pop("storage_mbps"), args.pop("preflight_json"))
    targets = args.pop("targets")
    given = {"assumptions": assumptions, "targets": [], "preset": args.get("config")}
    options = FitOptions(**given, **{field.name: args.pop(field.name) for field in dataclasses.fields(FitOptions)
                                     if field.name not in given})
    config = config_from_args(args)
    if targets:
        options = dataclasses.replace(options, targets=parse_targets(targets, config.mesh.num_slices))
    if options.max_compiles < 0:
        raise UsageError(f"--max_compiles must be >= 0, got {options.max_compiles}")
    if options.compile_workers < 0:
        raise UsageError(f"--compile_workers must be >= 0, got {options.compile_workers}")
    if options.compile_timeout <= 0:
        raise UsageError(f"--compile_timeout must be positive, got {options.compile_timeout:g}")
    return config, options


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, options = parse(argv)
        import jax

        jax.config.update("jax_platforms", "cpu")  # compile-only TPU devices; never claim an accelerator
        from harness.fit.cache import default_cache_dir
        from harness.fit.pool import default_workers
        from harness.fit.progress import CompileProgress
        from harness.fit.runner import run_fit

        workers = options.compile_workers or default_workers()
        cache_dir = default_cache_dir() if options.fit_cache_dir is None else options.fit_cache_dir
        with CompileProgress(sys.stderr) as progress:
            if options.targets:
                from harness.fit.compare import compare_targets

                result = compare_targets(config, options.targets, search=options.search,
                                         max_compiles=options.max_compiles, progress=progress, workers=workers,
                                         cache_dir=cache_dir, compile_timeout_s=options.compile_timeout,
                                         assumptions=options.assumptions, preset=options.preset)
            elif options.search == "settings":
                result = _settings(config, options, progress, workers, cache_dir)
            else:
                result = run_fit(config, search=options.search == "batch", max_compiles=options.max_compiles,
                                 progress=progress, workers=workers, cache_dir=cache_dir,
                                 compile_timeout_s=options.compile_timeout, assumptions=options.assumptions)
    except UsageError as err:
        return report_error(PROG, err)
    return write_outputs(result, Path(config.run.run_dir))


def _settings(config: TrainConfig, options: FitOptions, progress: CompileProgress, workers: int,
              cache_dir: str) -> SettingsSearch:
    """The settings search on the config's own target (harness/fit/settings.py)."""
    from harness.fit.pool import CompilePool
    from harness.fit.runner import prepare
    from harness.fit.settings import divisors, remat_levels, search_settings

    first = prepare(config)  # bad input fails here, before any compile
    count = len(divisors(first.target.devices_per_slice)) * sum(map(len, remat_levels(first.target)))
    progress.begin(first.target, "every FSDP size and remat policy", first.hbm, count * options.max_compiles)
    with CompilePool(workers, cache_dir, timeout_s=options.compile_timeout, progress=progress) as pool:
        return search_settings(config, pool, max_compiles=options.max_compiles, assumptions=options.assumptions,
                               preset=options.preset)


def write_outputs(result: FitReport | Comparison | SettingsSearch, run_dir: Path) -> int:
    """fit.json, the chart and the table; exit 0 if it fits (or any target or setting
    does), else 1."""
    from harness.fit.chart import write_chart, write_cost_chart
    from harness.fit.compare import Comparison
    from harness.fit.console import render, render_comparison, render_settings
    from harness.fit.report import write_json
    from harness.fit.settings import SettingsSearch

    write_json(result, run_dir / "fit.json")
    if isinstance(result, Comparison):
        write_cost_chart(result, run_dir / "fit_targets.png")
        print(render_comparison(result, [str(run_dir / "fit.json"), str(run_dir / "fit_targets.png")]))
        return 0 if result.any_fits else 1
    if isinstance(result, SettingsSearch):
        outputs = [str(run_dir / "fit.json")]
        if result.report is not None:
            write_chart(result.report, run_dir / "fit_memory.png")
            outputs.append(str(run_dir / "fit_memory.png"))
        print(render_settings(result, outputs))
        return 0 if result.fits else 1
    write_chart(result, run_dir / "fit_memory.png")
    print(render(result, [str(run_dir / "fit.json"), str(run_dir / "fit_memory.png")]))
    return 0 if result.fits else 1


def run() -> None:
    """The console entry point: `main`, then a fast exit (harness/runtime/fast_exit.py)."""
    from harness.runtime.fast_exit import run_and_exit

    run_and_exit(main)


if __name__ == "__main__":
    run()
