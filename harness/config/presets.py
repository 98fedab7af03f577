"""Named presets: `configs/NAME.toml`, one TOML table per settings group.

    base = "cpu-8-devices"     # optional: start from another preset (or a .toml path)

    [run]
    num_train_steps = 12

    [data]
    batch_size = 16

A preset sets only what differs from its base (flax's `configs/tpu.py` style). Unknown
tables and keys fail loudly, naming the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from harness.config.fields import apply_overrides, by_name, groups
from harness.config.groups import TrainConfig
from harness.errors import UsageError

CONFIGS_DIR = Path(__file__).resolve().parent.parent.parent / "configs"


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))


def _preset_path(name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise UsageError(f"config file not found: {name}")
        return candidate
    path = CONFIGS_DIR / f"{name}.toml"
    if not path.is_file():
        raise UsageError(
            f"unknown preset '{name}' (available: {', '.join(available_presets()) or 'none'})"
        )
    return path


def _settings_in(tables: dict[str, Any], path: Path) -> dict[str, Any]:
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
    path = _preset_path(name)
    if str(path) in _seen:
        raise UsageError(f"preset cycle: {' -> '.join(_seen + (str(path),))}")
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: not valid TOML: {err}") from None
    base = tables.pop("base", None)
    config = load_preset(base, _seen + (str(path),)) if base else TrainConfig()
    return apply_overrides(config, _settings_in(tables, path), source=str(path))
