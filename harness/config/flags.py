"""Command-line flags for every setting, shared by harness-train, -fit and -preflight.

Each setting takes its flat name (`--batch_size 32`, the seed's spelling) or its path
(`--data.batch_size 32`); a switch also takes `--no_NAME` (`--no_resume`,
`--no_checkpoint.resume`), so a preset's switch can be set either way.
Precedence: defaults < `--config` preset < flags.
"""

from __future__ import annotations

import argparse
from typing import Any

from harness.config.checks import validate
from harness.config.fields import apply_overrides, groups, settings
from harness.config.fields import TrainConfig
from harness.config.presets import load_preset, preset_descriptions
from harness.errors import UsageError

# The seed's short switches: flag -> (setting, the value it sets).
SHORT_SWITCHES = {
    "no_hard_examples": ("hard_examples.enabled", False),
    "no_wandb": ("wandb.enabled", False),
    "sync_checkpointing": ("checkpoint.async_save", False),
}
_CASTS = {"int": int, "float": float, "str": str}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose own errors are one line and exit 2, like every other usage error."""

    def error(self, message: str) -> None:
        raise UsageError(message)


class ListConfigs(argparse.Action):
    """`--list_configs`: each shipped preset and its one-line description, then exit 0
    (like --help, before anything else is parsed or checked)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        descriptions = preset_descriptions()
        width = max(map(len, descriptions), default=0)
        for name, description in descriptions.items():
            print(f"{name:<{width}}  {description}".rstrip())
        parser.exit()


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--list_configs` and one flag (two for a switch) per setting, grouped
    as the config is."""
    parser.add_argument("--config", dest="config", default=argparse.SUPPRESS,
                        help="a shipped preset's name (see --list_configs) or a path to a .toml file")
    parser.add_argument("--list_configs", action=ListConfigs, help="list the shipped presets and exit")
    sections = {name: parser.add_argument_group(f"[{name}]") for name in groups()}
    for row in settings():
        section = sections[row.path[0]]
        section.description = row.help
        names = [f"--{row.flat}", f"--{row.dotted}"]
        if row.kind == "bool":
            section.add_argument(*names, dest=row.dotted, action="store_const", const=True,
                                 default=argparse.SUPPRESS, help=f"default {row.default!r}")
            section.add_argument(f"--no_{row.flat}", f"--no_{row.dotted}", dest=row.dotted,
                                 action="store_const", const=False, default=argparse.SUPPRESS)
        else:
            section.add_argument(*names, dest=row.dotted, type=_CASTS[row.kind], metavar=row.kind.upper(),
                                 default=argparse.SUPPRESS, help=f"default {row.default!r}")
    for name, (dotted, value) in SHORT_SWITCHES.items():
        sections[dotted.split(".")[0]].add_argument(f"--{name}", dest=dotted, action="store_const",
                                                    const=value, default=argparse.SUPPRESS)


def config_from_args(args: dict[str, Any]) -> TrainConfig:
    """The validated config that `--config` and the setting flags in `args` describe.
    Takes out of `args` what it uses, and leaves a command's own flags."""
    preset = args.pop("config", None)
    given = {name: args.pop(name) for name in list(args) if "." in name}
    config = apply_overrides(load_preset(preset) if preset else TrainConfig(), given, source="command line")
    validate(config)
    return config
