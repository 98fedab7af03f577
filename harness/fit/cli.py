"""`harness-fit`: will this training step fit on that TPU pod? No TPU needed.

    harness-fit --config v5litepod-256 --model transformer --model_size 3b --batch_size 1024 --num_slices 2

Takes every harness-train flag (same presets, same precedence); the target is the
preset's `topology` (or `--topology v5litepod-16`, `--topology v5e:4x4`). Says on stderr
each compile as it starts and ends (a live bar on a terminal), then prints a table and
writes `fit.json` and `fit_memory.png` to `--run_dir`. Exit 0: it fits;
1: it does not (the compiler's numbers are in the report); 2: bad input, one line on
stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from harness.config import TrainConfig
from harness.config.flags import config_from_args
from harness.errors import UsageError
from harness.train.cli import build_parser as build_train_parser

PROG = "harness-fit"


def build_parser() -> argparse.ArgumentParser:
    parser = build_train_parser()
    parser.prog, parser.description = PROG, __doc__.splitlines()[0]
    parser.add_argument("--no_search", dest="search", action="store_false", default=True,
                        help="skip the largest-batch search (one compile instead of several)")
    parser.add_argument("--max_compiles", type=int, default=8, metavar="INT",
                        help="compiles the largest-batch search may spend (default 8)")
    return parser


def parse(argv: Sequence[str]) -> tuple[TrainConfig, bool, int]:
    args = vars(build_parser().parse_args(argv))
    search, max_compiles = args.pop("search"), args.pop("max_compiles")
    config = config_from_args(args)
    if max_compiles < 0:
        raise UsageError(f"--max_compiles must be >= 0, got {max_compiles}")
    return config, search, max_compiles


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, search, max_compiles = parse(argv)
        import jax

        jax.config.update("jax_platforms", "cpu")  # compile-only TPU devices; never claim an accelerator
        from harness.fit.progress import CompileProgress
        from harness.fit.runner import run_fit

        with CompileProgress(sys.stderr) as progress:
            report = run_fit(config, search=search, max_compiles=max_compiles, progress=progress)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code

    from harness.fit.chart import write_chart
    from harness.fit.console import render
    from harness.fit.report import write_json

    run_dir = Path(config.run.run_dir)
    write_json(report, run_dir / "fit.json")
    write_chart(report, run_dir / "fit_memory.png")
    print(render(report, [str(run_dir / "fit.json"), str(run_dir / "fit_memory.png")]))
    return 0 if report.fits else 1


def run() -> None:
    """The console entry point: `main`, then a fast exit (harness/runtime/fast_exit.py)."""
    from harness.runtime.fast_exit import run_and_exit

    run_and_exit(main)


if __name__ == "__main__":
    run()
