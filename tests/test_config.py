"""Presets, overrides, validation, and where distributed coordinates come from.

    .venv/bin/python -m pytest -q tests/test_config.py
"""

from __future__ import annotations

import dataclasses

import pytest

from harness.runtime import distributed
from harness.train.cli import parse_config
from harness.config import CONFIGS_DIR, TrainConfig, apply_overrides, available_presets, load_preset, validate
from harness.errors import UsageError

SHIPPED_PRESETS = sorted(CONFIGS_DIR.glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED_PRESETS, ids=lambda p: p.stem)
def test_every_shipped_preset_parses_and_validates(path):
    by_name = load_preset(path.stem)
    by_path = load_preset(str(path))

    assert by_name == by_path
    validate(by_name)


def test_the_shipped_presets_are_the_ones_listed():
    assert available_presets() == [p.stem for p in SHIPPED_PRESETS]
    assert {"base", "cpu-8-devices", "smoke"} <= set(available_presets())


def test_smoke_inherits_through_cpu_8_devices_and_base():
    smoke = load_preset("smoke")

    # Set by smoke itself.
    assert (smoke.num_train_steps, smoke.log_interval, smoke.save_interval) == (12, 4, 6)
    assert (smoke.image_size, smoke.hidden_dim, smoke.seq_len) == (32, 32, 64)
    # Inherited from cpu-8-devices.
    assert (smoke.cpu_devices, smoke.fsdp_devices) == (8, 8)
    # Inherited from base, and from the dataclass defaults below it.
    assert smoke.keep == 3
    assert smoke.learning_rate == TrainConfig().learning_rate


def test_a_preset_file_can_start_from_a_shipped_preset_and_from_another_file(tmp_path):
    parent = tmp_path / "parent.toml"
    parent.write_text('base = "smoke"\nbatch_size = 32\nlearning_rate = 1\n')
    child = tmp_path / "child.toml"
    child.write_text(f'base = "{parent}"\nnum_train_steps = 3\n')

    config = load_preset(str(child))

    assert config == dataclasses.replace(
        load_preset("smoke"), batch_size=32, learning_rate=1.0, num_train_steps=3
    )
    assert isinstance(config.learning_rate, float)


def test_unknown_key_in_a_preset_fails_naming_the_file_and_the_key(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('base = "smoke"\nbatch_sise = 32\n')

    with pytest.raises(UsageError) as err:
        load_preset(str(path))

    assert str(path) in str(err.value)
    assert "batch_sise" in str(err.value)


def test_unknown_key_in_a_base_preset_fails_naming_that_base_file(tmp_path):
    base = tmp_path / "base_with_typo.toml"
    base.write_text("lerning_rate = 0.1\n")
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
    ('batch_size = "16"\n', "'batch_size' must be int"),
    ("batch_size = true\n", "'batch_size' must be int"),
    ("resume = 1\n", "'resume' must be bool"),
    ("batch_size = [\n", "not valid TOML"),
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

    assert config.batch_size == 32          # flag
    assert config.num_train_steps == 12     # preset
    assert config.dropout_rate == TrainConfig().dropout_rate  # default
    assert config.resume is True and config.use_wandb is False


def test_every_switch_can_be_set_both_ways_over_a_preset(tmp_path):
    preset = tmp_path / "quiet.toml"
    preset.write_text('base = "smoke"\ntrack_hard_examples = false\nuse_wandb = false\nresume = true\n')

    assert parse_config(["--config", str(preset)]).track_hard_examples is False
    back_on = parse_config(["--config", str(preset), "--track_hard_examples", "--use_wandb", "--no_resume"])
    assert (back_on.track_hard_examples, back_on.use_wandb, back_on.resume) == (True, True, False)
    # The seed's short forms still work, and the last flag given wins.
    assert parse_config(["--config", "smoke", "--no_hard_examples"]).track_hard_examples is False
    assert parse_config(["--config", "smoke", "--no_wandb", "--use_wandb"]).use_wandb is True


def test_replace_checks_keys_and_types():
    config = TrainConfig()

    assert config.replace(batch_size=8).batch_size == 8
    with pytest.raises(UsageError, match="unknown config key"):
        config.replace(batch=8)
    with pytest.raises(UsageError, match="must be int"):
        apply_overrides(config, {"batch_size": 8.0}, source="test")


@pytest.mark.parametrize("changes, message", [
    ({"num_train_steps": 0}, "--num_train_steps must be positive, got 0"),
    ({"num_train_steps": -5}, "--num_train_steps must be positive, got -5"),
    ({"batch_size": 0}, "--batch_size must be positive"),
    ({"fsdp_devices": 0}, "--fsdp_devices must be positive"),
    ({"image_size": 30}, "--image_size must be a multiple of 4"),
    ({"hard_fraction": 1.5}, "--hard_fraction must be in"),
    ({"dropout_rate": 1.0}, "--dropout_rate must be in"),
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
