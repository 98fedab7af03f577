"""The harness-train command line of a test's tiny run: one builder, each test's
specifics as keywords, so a flag's spelling lives in one place for every test.

    train_args(root, cache, "--resume", log_interval=1, num_train_steps=12, no_hard_examples=True)
    -> --config smoke --no_wandb --log_interval 1 --num_train_steps 12 --no_hard_examples
       CACHE --checkpoint_dir ROOT/ckpt --run_dir ROOT/run --resume
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def train_args(root: Path | None, cache: Sequence[str], *extra: str, preset: str = "smoke",
               checkpoint_dir: str | None = None, run_dir: Path | None = None, **flags: object) -> list[str]:
    """`--config PRESET --no_wandb`, then `--NAME VALUE` for each of `flags` (`True`: the
    bare `--NAME`), `cache` (the session's compile-cache flags, or ()), the checkpoint
    and run directories (`root`/ckpt and `root`/run unless given) and `extra`, last, so
    that a test's own flags win."""
    named: list[str] = []
    for name, value in flags.items():
        assert value is not False, f"--{name}: pass True or leave it out"
        named += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else str(root / "ckpt")
    run_dir = run_dir if run_dir is not None else root / "run"
    return ["--config", preset, "--no_wandb", *named, *cache,
            "--checkpoint_dir", checkpoint_dir, "--run_dir", str(run_dir), *extra]


def train_command(args: Sequence[str]) -> list[str]:
    """`python -m harness.train ARGS`: a host's command under launch.local."""
    return [sys.executable, "-m", "harness.train", *args]


def pod_command(root: Path | None, cache: Sequence[str], *extra: str, preset: str = "local-2x4",
                **keywords: object) -> list[str]:
    """`train_command(train_args(...))` for a local pod (the 2 x 4 preset unless given)."""
    return train_command(train_args(root, cache, *extra, preset=preset, **keywords))
