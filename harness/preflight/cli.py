"""`harness-preflight`: flags -> TrainConfig + PreflightOptions -> runner.run.

    harness-preflight --config local-2x4 --checks consistency,devices

Takes every harness-train flag (same presets, same precedence: defaults < --config <
flags) and its own options below. Exit 0: no check FAILed; 1: at least one did (the
table and <run_dir>/preflight.json say which host and why); 2: bad input, one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness.config import TrainConfig
from harness.config.flags import config_from_args
from harness.errors import UsageError, report_error
from harness.preflight.faults import KINDS, check_fault
from harness.preflight.options import (CHECKS, DEFAULT_SIZES, PreflightOptions, parse_checks, parse_sizes,
                                      validate_options)
from harness.train.cli import build_parser as build_train_parser

PROG = "harness-preflight"


def build_parser() -> argparse.ArgumentParser:
    parser = build_train_parser()
    parser.prog, parser.description = PROG, __doc__.splitlines()[0]
    defaults = PreflightOptions()
    group = parser.add_argument_group("preflight")
    group.add_argument("--checks", default=",".join(CHECKS), metavar="LIST",
                       help=f"which checks run besides the rendezvous (default: all: {','.join(CHECKS)})")
    group.add_argument("--interconnect_sizes", default=",".join(map(str, DEFAULT_SIZES)), metavar="BYTES,...",
                       help="bytes each device contributes to each timed collective (default: %(default)s)")
    group.add_argument("--interconnect_repeats", type=int, default=defaults.interconnect_repeats, metavar="INT",
                       help="timed runs of each collective and size (default: %(default)s)")
    group.add_argument("--straggler_factor", type=float, default=defaults.straggler_factor, metavar="FLOAT",
                       help="a host whose latency to collectives is this many times the others' median is "
                            "a straggler (default: %(default)s)")
    group.add_argument("--slow_host_factor", type=float, default=defaults.slow_host_factor, metavar="FLOAT",
                       help="a host this many times slower than the median host at its own work (host speed, "
                            "the dry run's steps) fails (default: %(default)s)")
    group.add_argument("--throughput_max_bytes", type=int, default=defaults.throughput_max_bytes, metavar="BYTES",
                       help="the storage throughput test writes and reads the smaller of each host's checkpoint "
                            "shard and this (default: %(default)s)")
    group.add_argument("--dry_run_steps", type=int, default=defaults.dry_run_steps, metavar="INT",
                       help="training steps before the dry run's save and resume (default: %(default)s)")
    group.add_argument("--check_timeout", type=float, default=defaults.check_timeout, metavar="SECONDS",
                       help="the time bound of each check on each host (default: %(default)s)")
    group.add_argument("--testing_fault", default="", choices=("", *KINDS), metavar="KIND",
                       help=f"TESTING ONLY: make one host fail on purpose ({', '.join(KINDS)})")
    group.add_argument("--testing_fault_host", type=int, default=-1, metavar="H",
                       help="TESTING ONLY: the host --testing_fault breaks")
    return parser


def parse(argv: Sequence[str]) -> tuple[TrainConfig, PreflightOptions]:
    args = vars(build_parser().parse_args(argv))
    options = PreflightOptions(
        checks=parse_checks(args.pop("checks")),
        interconnect_sizes=parse_sizes(args.pop("interconnect_sizes")),
        interconnect_repeats=args.pop("interconnect_repeats"),
        straggler_factor=args.pop("straggler_factor"),
        slow_host_factor=args.pop("slow_host_factor"),
        throughput_max_bytes=args.pop("throughput_max_bytes"),
        dry_run_steps=args.pop("dry_run_steps"),
        check_timeout=args.pop("check_timeout"),
        testing_fault=args.pop("testing_fault"),
        testing_fault_host=args.pop("testing_fault_host"),
        preset=args.get("config"),
    )
    validate_options(options)
    check_fault(options.testing_fault, options.testing_fault_host, 0)
    config = config_from_args(args)
    return config, options


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, options = parse(argv)
        from harness.preflight.runner import run

        return run(config, options)
    except UsageError as err:
        return report_error(PROG, err)


def run() -> None:
    """The console entry point: `main`, then a fast exit (harness/runtime/fast_exit.py)."""
    from harness.runtime.fast_exit import run_and_exit

    run_and_exit(main)


if __name__ == "__main__":
    run()
