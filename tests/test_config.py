"""Grouped settings, TOML presets, flags, validation, and where distributed coordinates
come from.

    .venv/bin/python -m pytest -q tests/test_config.py
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from harness.config import TrainConfig, apply_overrides, available_presets, load_preset, validate
from harness.config.fields import by_name, flat_values, settings
from harness.config.flags import SHORT_SWITCHES
from harness.errors import UsageError
from harness.runtime import distributed
from harness.train.cli import build_parser, parse_config
from tests.support.runs import REPO_ROOT

SHIPPED_PRESETS = sorted((REPO_ROOT / "configs").glob("*.toml"))
# The seed scripts' flags, which must keep meaning what they meant.
SEED_FLAGS = {
    "--num_train_steps": ("run.num_train_steps", "7", 7),
    "--batch_size": ("data.batch_size", "24", 24),
    "--log_interval": ("run.log_interval", "3", 3),
    "--hard_example_log_interval": ("hard_examples.log_interval", "9", 9),
    "--max_hard_examples_buffer": ("hard_examples.buffer_size", "11", 11),
    "--checkpoint_dir": ("checkpoint.dir", "/tmp/x", "/tmp/x"),
    "--fsdp_devices": ("mesh.fsdp_devices", "2", 2),
}


def _value(config: TrainConfig, dotted: str):
    group, field = dotted.split(".")
    return getattr(getattr(config, group), field)


@pytest.mark.parametrize("path", SHIPPED_PRESETS, ids=lambda p: p.stem)
def test_every_shipped_preset_parses_and_validates(path):
    by_name_ = load_preset(path.stem)
    by_path = load_preset(str(path))

    assert by_name_ == by_path
    validate(by_name_)


def test_the_shipped_presets_are_the_ones_listed():
    assert available_presets() == [p.stem for p in SHIPPED_PRESETS]
    assert {"base", "cpu-8-devices", "smoke"} <= set(available_presets())


def test_smoke_inherits_through_cpu_8_devices_and_base():
    smoke = load_preset("smoke")

    # Set by smoke itself.
    assert (smoke.run.num_train_steps, smoke.run.log_interval, smoke.checkpoint.save_interval) == (12, 4, 6)
    assert (smoke.data.image_size, smoke.model.hidden_dim, smoke.data.seq_len) == (32, 32, 64)
    # Inherited from cpu-8-devices.
    assert (smoke.devices.cpu_devices, smoke.mesh.fsdp_devices) == (8, 8)
    # Inherited from base, and from the group defaults below it.
    assert smoke.checkpoint.keep == 3
    assert smoke.optimizer.learning_rate == 3e-3


def test_a_preset_file_can_start_from_a_shipped_preset_and_from_another_file(tmp_path):
    parent = tmp_path / "parent.toml"
    parent.write_text('base = "smoke"\n[data]\nbatch_size = 32\n[optimizer]\nlearning_rate = 1\n')
    child = tmp_path / "child.toml"
    child.write_text(f'base = "{parent}"\n[run]\nnum_train_steps = 3\n')

    config = load_preset(str(child))

    smoke = load_preset("smoke")
    assert config == dataclasses.replace(
        smoke, data=dataclasses.replace(smoke.data, batch_size=32),
        optimizer=dataclasses.replace(smoke.optimizer, learning_rate=1.0),
        run=dataclasses.replace(smoke.run, num_train_steps=3))
    assert isinstance(config.optimizer.learning_rate, float)


@pytest.mark.parametrize("text, message", [
    ('base = "smoke"\n[data]\nbatch_sise = 32\n', "unknown config key(s): data.batch_sise"),
    ('[datta]\nbatch_size = 32\n', "unknown config table [datta] (tables: run, data, model, optimizer, "
                                   "checkpoint, hard_examples, mesh, devices, tpu, distributed, wandb)"),
    ('batch_size = 32\n', "unknown config key(s): batch_size (settings go in group tables; "
                          "put it in [data] as batch_size = ...)"),
    ('batch_sise = 32\n', "unknown config key(s): batch_sise (settings go in group tables)"),
    # A flat name inside a table is still unknown: a table holds its own field names.
    ('[hard_examples]\nhard_example_log_interval = 5\n', "unknown config key(s): hard_examples.hard_example_log_interval"),
])
def test_unknown_tables_and_keys_in_a_preset_fail_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "typo.toml"
    path.write_text(text)

    with pytest.raises(UsageError) as err:
        load_preset(str(path))

    assert str(err.value) == f"{path}: {message}"


def test_unknown_key_in_a_base_preset_fails_naming_that_base_file(tmp_path):
    base = tmp_path / "base_with_typo.toml"
    base.write_text("[optimizer]\nlerning_rate = 0.1\n")
    child = tmp_path / "child.toml"
    child.write_text(f'base = "{base}"\n')

    with pytest.raises(UsageError, match="lerning_rate") as err:
        load_preset(str(child))

    assert str(base) in str(err.value)


def test_preset_cycle_fails(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(f'base = "{b}"\n')
    b.write_text(f'base = "{a}"\n')

    with pytest.raises(UsageError, match="preset cycle"):
        load_preset(str(a))


@pytest.mark.parametrize("text, message", [
    ('[data]\nbatch_size = "16"\n', "'batch_size' must be int"),
    ("[data]\nbatch_size = true\n", "'batch_size' must be int"),
    ("[checkpoint]\nresume = 1\n", "'resume' must be bool"),
    ("[data]\nbatch_size = [\n", "not valid TOML"),
])
def test_malformed_preset_values_fail(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)

    with pytest.raises(UsageError, match=message):
        load_preset(str(path))


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(UsageError) as err:
        load_preset("nope")

    assert "unknown preset 'nope'" in str(err.value)
    for name in available_presets():
        assert name in str(err.value)


def test_command_line_flags_win_over_the_preset_which_wins_over_defaults():
    config = parse_config(["--config", "smoke", "--batch_size", "32", "--resume", "--no_wandb"])

    assert config.data.batch_size == 32          # flag
    assert config.run.num_train_steps == 12      # preset
    assert config.model.dropout_rate == 0.1      # default
    assert config.checkpoint.resume is True and config.wandb.enabled is False


@pytest.mark.parametrize("flag", sorted(SEED_FLAGS))
def test_the_seed_flags_keep_their_meaning(flag):
    dotted, text, value = SEED_FLAGS[flag]

    assert _value(parse_config([flag, text]), dotted) == value
    assert _value(parse_config(["--config", "smoke", flag, text]), dotted) == value
    assert parse_config(["--no_hard_examples"]).hard_examples.enabled is False


@pytest.mark.parametrize("row", settings(), ids=lambda row: row.dotted)
def test_every_setting_has_a_flat_and_a_grouped_flag_that_agree(row):
    given = {"bool": [], "int": ["5"], "float": ["0.5"], "str": ["something"]}[row.kind]
    expected = {"bool": True, "int": 5, "float": 0.5, "str": "something"}[row.kind]

    assert _value(TrainConfig(), row.dotted) == row.default
    for flag in (f"--{row.flat}", f"--{row.dotted}"):
        args = vars(build_parser().parse_args([flag, *given]))
        assert args == {row.dotted: expected}
    if row.kind == "bool":
        for flag in (f"--no_{row.flat}", f"--no_{row.dotted}"):
            args = vars(build_parser().parse_args([flag]))
            assert args == {row.dotted: False}


def test_every_switch_can_be_set_both_ways_over_a_preset(tmp_path):
    preset = tmp_path / "quiet.toml"
    preset.write_text('base = "smoke"\n[hard_examples]\nenabled = false\n[wandb]\nenabled = false\n'
                      '[checkpoint]\nresume = true\n')

    assert parse_config(["--config", str(preset)]).hard_examples.enabled is False
    back_on = parse_config(["--config", str(preset), "--track_hard_examples", "--wandb.enabled", "--no_resume"])
    assert (back_on.hard_examples.enabled, back_on.wandb.enabled, back_on.checkpoint.resume) == (True, True, False)
    # The seed's short forms still work, and the last flag given wins.
    assert parse_config(["--config", "smoke", "--no_hard_examples"]).hard_examples.enabled is False
    assert parse_config(["--config", "smoke", "--no_wandb", "--use_wandb"]).wandb.enabled is True
    assert parse_config(["--sync_checkpointing"]).checkpoint.async_save is False
    assert {dotted for dotted, _ in SHORT_SWITCHES.values()} <= {row.dotted for row in settings()}


def test_unknown_flags_fail_as_usage_errors():
    with pytest.raises(UsageError, match="unrecognized arguments: --batch_sise"):
        parse_config(["--batch_sise", "3"])
    with pytest.raises(UsageError, match="unrecognized arguments: --data.batch_sise"):
        parse_config(["--data.batch_sise", "3"])


def test_replace_takes_flat_names_and_paths_and_checks_keys_and_types():
    config = TrainConfig()

    assert config.replace(batch_size=8).data.batch_size == 8
    assert config.replace(**{"data.batch_size": 8}) == config.replace(batch_size=8)
    assert config.replace(model="transformer").model.name == "transformer"
    with pytest.raises(UsageError, match="unknown config key"):
        config.replace(batch=8)
    with pytest.raises(UsageError, match="must be int"):
        apply_overrides(config, {"batch_size": 8.0}, source="test")


def test_flat_names_are_unique_and_every_value_is_reachable_by_both_names():
    config = load_preset("v5litepod-256")
    flat = flat_values(config)

    assert len(flat) == len(settings()) == len({row.dotted for row in settings()})
    for row in settings():
        assert config.setting(row.flat) == config.setting(row.dotted) == flat[row.flat]
        assert by_name()[row.flat] is by_name()[row.dotted] is row


def test_each_default_is_written_once():
    """A setting's default lives in its group (harness/config/groups.py) only: the model
    and data specs built from a config carry none of their own."""
    from harness.models.interface import ModelSpec

    assert all(field.default is dataclasses.MISSING for field in dataclasses.fields(ModelSpec))
    for module in Path("harness").rglob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Spec", "Config")) \
                    and module.parts[:2] != ("harness", "config") and node.name != "ModelSpec":
                fields = {stmt.target.id for stmt in node.body if isinstance(stmt, ast.AnnAssign)
                          and isinstance(stmt.target, ast.Name) and stmt.value is not None}
                assert not fields & {row.path[1] for row in settings()}, f"{module}:{node.name}"


@pytest.mark.parametrize("changes, message", [
    ({"num_train_steps": 0}, "--num_train_steps must be positive, got 0"),
    ({"num_train_steps": -5}, "--num_train_steps must be positive, got -5"),
    ({"batch_size": 0}, "--batch_size must be positive"),
    ({"fsdp_devices": 0}, "--fsdp_devices must be positive"),
    ({"max_hard_examples_buffer": 0}, "--max_hard_examples_buffer must be positive"),
    ({"image_size": 30}, "--image_size must be a multiple of 4"),
    ({"hard_fraction": 1.5}, "--hard_fraction must be in"),
    ({"dropout_rate": 1.0}, "--dropout_rate must be in"),
    ({"learning_rate": float("nan")}, "--learning_rate must be a finite number"),
    ({"resume": True, "overwrite": True}, "contradict"),
    ({"num_train_steps": 2**27, "batch_size": 16}, "below 2\\*\\*31"),
])
def test_validate_rejects_bad_values(changes, message):
    with pytest.raises(UsageError, match=message):
        validate(TrainConfig().replace(**changes))


# distributed.explicit_coordinates: flags > HARNESS_* environment > nothing.

@pytest.fixture
def clean_env(monkeypatch):
    for name in (distributed.ENV_ADDRESS, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_coordinates_anywhere_means_single_process(clean_env):
    assert distributed.explicit_coordinates("", 0, -1) is None


def test_coordinates_from_the_environment(clean_env):
    clean_env.setenv(distributed.ENV_ADDRESS, "127.0.0.1:1234")
    clean_env.setenv(distributed.ENV_NUM_PROCESSES, "4")
    clean_env.setenv(distributed.ENV_PROCESS_ID, "3")

    assert distributed.explicit_coordinates("", 0, -1) == distributed.Coordinates("127.0.0.1:1234", 4, 3)


def test_flags_win_over_the_environment(clean_env):
    clean_env.setenv(distributed.ENV_ADDRESS, "10.0.0.1:1")
    clean_env.setenv(distributed.ENV_NUM_PROCESSES, "4")
    clean_env.setenv(distributed.ENV_PROCESS_ID, "3")

    assert distributed.explicit_coordinates("127.0.0.1:99", 2, 0) == distributed.Coordinates("127.0.0.1:99", 2, 0)
    # Flags and environment can be mixed: each value comes from the flag when given.
    assert distributed.explicit_coordinates("", 8, -1) == distributed.Coordinates("10.0.0.1:1", 8, 3)


@pytest.mark.parametrize("address, num, pid, env, missing", [
    ("127.0.0.1:1", 0, -1, {}, "num_processes, process_id"),
    ("", 2, -1, {}, "coordinator_address, process_id"),
    ("", 0, 0, {}, "coordinator_address, num_processes"),
    ("", 0, -1, {distributed.ENV_PROCESS_ID: "1"}, "coordinator_address, num_processes"),
])
def test_partial_coordinates_name_the_missing_ones(clean_env, address, num, pid, env, missing):
    for name, value in env.items():
        clean_env.setenv(name, value)

    with pytest.raises(UsageError) as err:
        distributed.explicit_coordinates(address, num, pid)

    assert f"missing: {missing} " in str(err.value)


@pytest.mark.parametrize("num, pid", [(2, 2), (2, 5), (1, 1)])
def test_process_id_out_of_range_fails(clean_env, num, pid):
    with pytest.raises(UsageError, match=f"process_id must be in \\[0, {num}\\).*got {pid} of {num}"):
        distributed.explicit_coordinates("127.0.0.1:1", num, pid)


def test_non_integer_process_id_in_the_environment_fails(clean_env):
    clean_env.setenv(distributed.ENV_PROCESS_ID, "one")

    with pytest.raises(UsageError, match=f"{distributed.ENV_PROCESS_ID} must be an integer, got 'one'"):
        distributed.explicit_coordinates("127.0.0.1:1", 2, -1)


def test_address_without_port_fails(clean_env):
    with pytest.raises(UsageError, match="HOST:PORT"):
        distributed.explicit_coordinates("localhost", 2, 0)


def test_unknown_distributed_mode_fails():
    with pytest.raises(UsageError, match="--distributed must be one of auto, pod, off"):
        distributed.initialize("sometimes")
