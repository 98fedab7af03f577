"""`harness-train`: flags -> TrainConfig -> runtime and start-up checks -> the run.

    harness-train --config cpu-8-devices --num_train_steps 100 --batch_size 16

Every setting has a flat flag (`--batch_size`) and a grouped one (`--data.batch_size`);
precedence: defaults < `--config` preset < flags given on the command line.
Bad input (unknown preset, indivisible batch, unwritable checkpoint dir, ...) prints one
line on stderr and exits 2 before anything is written, with the same line on every host.
Exit codes follow the restart contract in harness/errors.py: 0 done, 1 non-finite, 2 bad
input, 3 this host's TPU is unusable, 42 (restart me) for a preemption that saved its
checkpoint, a lost host, or checkpoints that storage could not read (never treated as damage).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from harness.config.flags import ArgumentParser, add_config_flags, config_from_args
from harness.config import TrainConfig
from harness.errors import (EXIT_RESTARTABLE, CheckpointSaveError, CheckpointUnreadableError, HostLostError,
                            NonFiniteStateError, TpuUnavailableError, UsageError, report_error)

PROG = "harness-train"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_config_flags(parser)
    return parser


def parse_config(argv: Sequence[str]) -> TrainConfig:
    return config_from_args(vars(build_parser().parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = parse_config(argv)
        from harness.train.startup import check_startup, start_runtime

        start_runtime(config.devices, config.distributed)
        check_startup(config)
    except (UsageError, TpuUnavailableError) as err:
        return report_error(PROG, err)
    except CheckpointUnreadableError as err:
        _exit_together(err)

    from harness.runtime.checkpoint import delete_all
    from harness.train.loop import train

    if config.checkpoint.overwrite:
        delete_all(config.checkpoint.dir)
    try:
        summary = train(config)
    except (UsageError, NonFiniteStateError) as err:
        return report_error(PROG, err)
    except CheckpointUnreadableError as err:
        _exit_together(err)
    except (HostLostError, CheckpointSaveError) as err:
        # At once: after an out-of-memory error, even a normal shutdown may not get far.
        code = report_error(PROG, err)
        sys.stdout.flush()
        os._exit(code)
    return EXIT_RESTARTABLE if summary.preempted else 0


def _exit_together(err: CheckpointUnreadableError) -> None:
    """An agreed verdict: every host prints it, waits (bounded) until all have, then
    exits at once. Without the wait the coordinator's exit kills the others' JAX
    clients (a fatal error) before they have said the line."""
    from harness.runtime.distributed import wait_for_every_host

    code = report_error(PROG, err)
    sys.stdout.flush()
    wait_for_every_host("agreed-exit")
    os._exit(code)


def run() -> None:
    """The console entry point: `main`, then a fast exit (harness/runtime/fast_exit.py)."""
    from harness.runtime.fast_exit import run_and_exit

    run_and_exit(main)


if __name__ == "__main__":
    run()
