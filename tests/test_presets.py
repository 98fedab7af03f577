"""The shipped presets as a user meets them: `--list_configs` on every command, a
one-line description per preset that tells the truth about its hosts and devices, and
`description` as a top-level key that is not a setting. Where the presets are read from
without an install (a source tree, as the TPU pod launcher ships it) is checked here;
the installed wheel is checked in tests/test_packaging.py.

    .venv/bin/python -m pytest -q tests/test_presets.py
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import available_presets, load_preset, preset_descriptions
from harness.errors import UsageError
from harness.fit.topology import resolve
from tests.support.runs import REPO_ROOT, failure_report, harness_env

# "4 hosts x 4 chips" / "1 host x 8 fake CPU devices" in a preset's description.
HOSTS_X_DEVICES = re.compile(r"(\d+) hosts? x (\d+) (chips|fake CPU devices)")


@pytest.mark.parametrize("command", ["harness-train", "harness-fit", "harness-preflight"])
def test_list_configs_names_every_preset_with_its_description(command, tmp_path):
    listing = subprocess.run([str(Path(sys.executable).parent / command), "--list_configs"], cwd=tmp_path,
                             env=harness_env(), capture_output=True, text=True, timeout=120)

    assert listing.returncode == 0, failure_report(listing)
    rows = [re.split(r"\s{2,}", line, maxsplit=1) for line in listing.stdout.splitlines()]
    assert [name for name, _ in rows] == sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.toml"))
    assert dict(rows) == preset_descriptions()
    assert listing.stderr == ""


@pytest.mark.parametrize("name", available_presets())
def test_every_shipped_preset_describes_its_hosts_and_devices(name):
    """One line; hosts and chips as the product table has them (harness/fit/topology.py),
    fake CPU devices as the preset sets them."""
    description = preset_descriptions()[name]
    config = load_preset(name)

    assert description and "\n" not in description and len(description) <= 120
    counts = HOSTS_X_DEVICES.search(description)
    if config.tpu.topology:
        target = resolve(config.tpu.topology, config.tpu.chip_config)
        assert counts and counts[3] == "chips", description
        assert (int(counts[1]), int(counts[2])) == (target.hosts_per_slice, target.chips // target.hosts_per_slice)
    elif config.devices.cpu_devices:
        assert counts and counts[3] == "fake CPU devices", description
        assert int(counts[2]) == config.devices.cpu_devices


def test_description_is_not_a_setting(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('description = "my variant"\nbase = "smoke"\n\n[run]\nnum_train_steps = 3\n')
    smoke = load_preset("smoke")

    assert load_preset(str(path)) == dataclasses.replace(smoke, run=dataclasses.replace(smoke.run, num_train_steps=3))


@pytest.mark.parametrize("text, message", [
    ("description = 3\n", r"mine.toml: description must be a string, got 3$"),
    ("base = [\"smoke\"]\n", r"mine.toml: base must be a string, got \['smoke'\]$"),
])
def test_a_malformed_description_or_base_is_a_usage_error(tmp_path, text, message):
    path = tmp_path / "mine.toml"
    path.write_text(text)

    with pytest.raises(UsageError, match=message):
        load_preset(str(path))


def test_a_source_tree_without_an_install_reads_its_own_configs(tmp_path):
    """What the TPU pod launcher runs: `python -m harness.train` in the shipped tree,
    nothing installed (`-S`: no site-packages, so no editable install either)."""
    for name in ("harness", "configs"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "configs" / "mine.toml").write_text('description = "only in this tree"\nbase = "smoke"\n')

    listing = subprocess.run([sys.executable, "-S", "-m", "harness.train", "--list_configs"], cwd=tmp_path,
                             env=harness_env(), capture_output=True, text=True, timeout=120)

    assert listing.returncode == 0, failure_report(listing)
    assert re.search(r"^mine\s+only in this tree$", listing.stdout, re.MULTILINE), listing.stdout
