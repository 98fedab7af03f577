"""Named presets: `NAME.toml` files, one TOML table per settings group.

    description = "1 host x 8 fake CPU devices: ..."   # one line for --list_configs
    base = "cpu-8-devices"     # optional: start from another preset (or a .toml path)

    [run]
    num_train_steps = 12

    [data]
    batch_size = 16

A preset sets only what differs from its base (flax's `configs/tpu.py` style). Unknown
tables and keys fail loudly, naming the file and the key. `description` is not a setting
and is not inherited.

The shipped presets are written in the top-level `configs/`, which setup.cfg installs as
the package data `harness.presets`; reading them through `importlib.resources` finds them
in a wheel install, an editable one, and from any working directory.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from harness.config.fields import apply_overrides, by_name, groups
from harness.config.fields import TrainConfig
from harness.errors import UsageError

# Top-level keys of a preset file that are not settings groups.
PRESET_KEYS = ("description", "base")


def _shipped_presets() -> Traversable:
    """The package data when podharness is installed. A source tree run without
    installing it (the TPU pod launcher runs `python -m harness.train` in the tree it
    ships) has no `harness.presets`, and reads configs/ beside harness/."""
    try:
        return resources.files("harness.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "configs"


CONFIGS_DIR = _shipped_presets()  # where the shipped presets are read from


def available_presets() -> list[str]:
    return sorted(entry.name.removesuffix(".toml") for entry in CONFIGS_DIR.iterdir()
                  if entry.name.endswith(".toml") and entry.is_file())


def _preset_file(name: str) -> Traversable:
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"config file not found: {name}")
        return path
    if name not in available_presets():
        raise UsageError(
            f"unknown preset '{name}' (available: {', '.join(available_presets()) or 'none'})"
        )
    return CONFIGS_DIR / f"{name}.toml"


def _read(file: Traversable) -> dict[str, Any]:
    try:
        tables = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{file}: not valid TOML: {err}") from None
    for key in PRESET_KEYS:
        if key in tables and not isinstance(tables[key], str):
            raise UsageError(f"{file}: {key} must be a string, got {tables[key]!r}")
    return tables


def _settings_in(tables: dict[str, Any], path: Traversable) -> dict[str, Any]:
    """`{"data": {"batch_size": 8}}` -> `{"data.batch_size": 8}`, refusing what is not a
    group table (a flat key gets told which table it belongs in)."""
    values = {}
    for group, table in tables.items():
        if not isinstance(table, dict):
            row = by_name().get(group)
            where = f"; put it in [{row.path[0]}] as {row.path[1]} = ..." if row else ""
            raise UsageError(f"{path}: unknown config key(s): {group} (settings go in group tables{where})")
        if group not in groups():
            raise UsageError(f"{path}: unknown config table [{group}] (tables: {', '.join(groups())})")
        values.update({f"{group}.{key}": value for key, value in table.items()})
    return values


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> TrainConfig:
    """The config a preset names: its `base` chain applied in order onto the defaults."""
    file = _preset_file(name)
    if str(file) in _seen:
        raise UsageError(f"preset cycle: {' -> '.join(_seen + (str(file),))}")
    tables = _read(file)
    tables.pop("description", None)
    base = tables.pop("base", None)
    config = load_preset(base, _seen + (str(file),)) if base else TrainConfig()
    return apply_overrides(config, _settings_in(tables, file), source=str(file))


def preset_descriptions() -> dict[str, str]:
    """Each shipped preset's one-line `description` ("" where it has none)."""
    return {name: _read(CONFIGS_DIR / f"{name}.toml").get("description", "") for name in available_presets()}
