"""The run's configuration: grouped settings, TOML presets, flags (see each module).

    groups.py   the settings and their defaults, by group (run, data, model, ...)
    fields.py   TrainConfig (all the groups); each setting's flat name, path and type; overrides by name
    presets.py  configs/NAME.toml (installed as harness.presets), one table per group
    flags.py    --flat_name and --group.name for every setting
    checks.py   what a config must satisfy before anything starts
"""

from harness.config.checks import validate
from harness.config.fields import TrainConfig, apply_overrides, flat_values
from harness.config.groups import DataConfig, ModelConfig
from harness.config.presets import CONFIGS_DIR, available_presets, load_preset, preset_descriptions

__all__ = ["CONFIGS_DIR", "DataConfig", "ModelConfig", "TrainConfig", "apply_overrides", "available_presets",
           "flat_values", "load_preset", "preset_descriptions", "validate"]
