"""`harness-train`: flags -> TrainConfig -> runtime and start-up checks -> the loop.

    harness-train --config cpu-8-devices --num_train_steps 100 --batch_size 16

Precedence: dataclass defaults < `--config` preset < flags given on the command line.
Bad input (unknown preset, indivisible batch, unwritable checkpoint dir, ...) prints one
line on stderr and exits 2 before anything is written, with the same line on every host.
Exit codes follow the restart contract in harness/errors.py: 0 done, 1 non-finite, 2 bad
input, 42 (restart me) for a preemption that saved its checkpoint or a lost host.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from harness.config import FIELD_TYPES, TrainConfig, apply_overrides, load_preset, validate
from harness.errors import EXIT_RESTARTABLE, HostLostError, NonFiniteStateError, UsageError

PROG = "harness-train"

# Short names kept from the seed scripts: flag -> (field, value it sets). Every boolean
# field also has `--FIELD` and `--no_FIELD`, so a preset's switch can be set either way.
ALIASES = {
    "no_hard_examples": ("track_hard_examples", False),
    "no_wandb": ("use_wandb", False),
    "sync_checkpointing": ("async_checkpointing", False),
}


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                             argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="preset name in configs/ (or a .toml path)")
    for name, kind in FIELD_TYPES.items():
        if kind == "bool":
            default = getattr(TrainConfig(), name)
            parser.add_argument(f"--{name}", dest=name, action="store_const", const=True,
                                help=f"default {default!r}")
            parser.add_argument(f"--no_{name}", dest=name, action="store_const", const=False)
        else:
            caster = {"int": int, "float": float, "str": str}[kind]
            default = getattr(TrainConfig(), name)
            parser.add_argument(f"--{name}", type=caster, metavar=kind.upper(),
                                help=f"default {default!r}")
    for flag, (field, value) in ALIASES.items():
        parser.add_argument(f"--{flag}", dest=field, action="store_const", const=value)
    return parser


def parse_config(argv: Sequence[str]) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("config", None)
    config = load_preset(preset) if preset else TrainConfig()
    config = apply_overrides(config, args, source="command line")
    validate(config)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = parse_config(argv)
        from harness.train.startup import prepare_runtime

        prepare_runtime(config)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code

    from harness.runtime.checkpoint import delete_all
    from harness.train.loop import train

    if config.overwrite:
        delete_all(config.checkpoint_dir)
    try:
        summary = train(config)
    except (UsageError, NonFiniteStateError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except HostLostError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(err.exit_code)
    return EXIT_RESTARTABLE if summary.preempted else 0


if __name__ == "__main__":
    sys.exit(main())
