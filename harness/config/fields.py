"""The whole config (`TrainConfig`: one field per group of groups.py), and every setting
as one row: its flat name, its group and field, its type and default.

Presets, flags, `TrainConfig.replace` and the checkpoint's resume check all address
settings through this table, so a name is spelled once and a typo fails the same way
everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

from harness.config.groups import (CheckpointConfig, DataConfig, DevicesConfig, DistributedConfig, HardExamplesConfig,
                                   MeshConfig, ModelConfig, OptimizerConfig, RunConfig, TpuConfig, WandbConfig)
from harness.errors import UsageError

_PYTHON_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run, by group. `replace` takes flat names: `replace(batch_size=8)`."""

    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    hard_examples: HardExamplesConfig = HardExamplesConfig()
    mesh: MeshConfig = MeshConfig()
    devices: DevicesConfig = DevicesConfig()
    tpu: TpuConfig = TpuConfig()
    distributed: DistributedConfig = DistributedConfig()
    wandb: WandbConfig = WandbConfig()

    def replace(self, **changes: Any) -> TrainConfig:
        return apply_overrides(self, changes, source="overrides")

    def setting(self, name: str) -> Any:
        """One setting by its flat name (`batch_size`) or path (`data.batch_size`)."""
        group, field = field_named(name).path
        return getattr(getattr(self, group), field)


class Setting(NamedTuple):
    flat: str               # --batch_size: the seed's spelling, unique over all groups
    path: tuple[str, str]   # ("data", "batch_size"): --data.batch_size, [data] batch_size
    kind: str               # int | float | bool | str
    default: Any
    help: str               # the group's docstring, for --help

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@functools.cache
def settings() -> tuple[Setting, ...]:
    rows = []
    for group in dataclasses.fields(TrainConfig):
        group_type = type(group.default)
        for field in dataclasses.fields(group_type):
            rows.append(Setting(field.metadata.get("flag", field.name), (group.name, field.name),
                                field.type, field.default, (group_type.__doc__ or "").strip()))
    flats = [row.flat for row in rows]
    duplicates = sorted({name for name in flats if flats.count(name) > 1})
    if duplicates:
        raise TypeError(f"flat setting names must be unique, repeated: {', '.join(duplicates)}")
    return tuple(rows)


@functools.cache
def by_name() -> dict[str, Setting]:
    """Each setting under both of its names: flat (`batch_size`) and dotted (`data.batch_size`)."""
    return {**{row.flat: row for row in settings()}, **{row.dotted: row for row in settings()}}


def groups() -> tuple[str, ...]:
    return tuple(group.name for group in dataclasses.fields(TrainConfig))


def field_named(name: str) -> Setting:
    try:
        return by_name()[name]
    except KeyError:
        raise UsageError(f"unknown config key: {name}") from None


def _coerce(row: Setting, value: Any, source: str) -> Any:
    kind = _PYTHON_TYPES[row.kind]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{source}: '{row.flat}' must be {kind.__name__}, got {value!r}")
    return value


def apply_overrides(config: TrainConfig, values: Mapping[str, Any], *, source: str) -> TrainConfig:
    """`config` with `values` (by flat name or group.field path) applied; unknown names
    and wrong types fail, naming `source`."""
    unknown = sorted(name for name in values if name not in by_name())
    if unknown:
        raise UsageError(f"{source}: unknown config key(s): {', '.join(unknown)}")
    by_group: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        row = by_name()[name]
        by_group.setdefault(row.path[0], {})[row.path[1]] = _coerce(row, value, source)
    return dataclasses.replace(config, **{
        group: dataclasses.replace(getattr(config, group), **changes) for group, changes in by_group.items()
    })


def flat_values(config: TrainConfig) -> dict[str, Any]:
    """Every setting by its flat name: what a checkpoint compares and a hash covers."""
    return {row.flat: config.setting(row.flat) for row in settings()}
