"""The pod image's Dockerfile, read as Docker reads it (dockerfile-parse): no image can be
built on these machines (no Docker daemon), so what the image would hold is checked
against setup.cfg instead. What a `pip install '.[tpu]'` of the copied files gives is what
tests/test_packaging.py installs from a wheel.

    .venv/bin/python -m pytest -q tests/test_dockerfile.py
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys

import pytest
from dockerfile_parse import DockerfileParser

from tests.support.runs import REPO_ROOT, failure_report

# python:3.11.14-slim-bookworm, optionally @sha256:<digest>: a full version and a Debian release.
PINNED_PYTHON = re.compile(r"python:3\.(\d+)\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?")
BUILD_AND_PUSH = re.compile(r"^\s*#?\s*(docker (?:build|push) .+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    parsed = DockerfileParser(path=str(REPO_ROOT / "Dockerfile"))
    return [(i["instruction"], i["value"]) for i in parsed.structure if i["instruction"] != "COMMENT"]


@pytest.fixture(scope="module")
def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    return config


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.strip().splitlines() if line.strip()]


def _values(instructions: list[tuple[str, str]], name: str) -> list[str]:
    return [value for instruction, value in instructions if instruction == name]


def test_the_base_is_a_pinned_python_that_setup_cfg_accepts(instructions, setup_cfg):
    (base,) = _values(instructions, "FROM")
    pinned = PINNED_PYTHON.fullmatch(base)

    assert pinned, f"FROM {base}: pin a full version, e.g. python:3.11.14-slim-bookworm"
    minimum = re.fullmatch(r">=3\.(\d+)", setup_cfg["options"]["python_requires"])
    assert int(pinned[1]) >= int(minimum[1])


def test_it_installs_the_package_with_exactly_the_tpu_extra(instructions, setup_cfg):
    installs = [shlex.split(run) for run in _values(instructions, "RUN") if "pip install" in run]

    assert len(installs) == 1, installs
    words = installs[0]
    start = words.index("install") + 1
    end = words.index("&&", start) if "&&" in words[start:] else len(words)
    assert words[start - 2:start] == ["pip", "install"] and words[start:end] == [".[tpu]"]
    tpu = _lines(setup_cfg["options.extras_require"]["tpu"])
    jax_pin = next(r for r in _lines(setup_cfg["options"]["install_requires"]) if r.startswith("jax=="))
    assert [r.replace("jax[tpu]", "jax") for r in tpu] == [jax_pin]  # libtpu for the jax the package pins


def test_it_copies_what_setup_cfg_builds_from_and_the_dockerignore_lets_it_in(instructions, setup_cfg):
    """The package's directories (configs/ among them: the presets' package data),
    setup.cfg's long_description file and the build files; nothing else."""
    copied = set()
    for value in _values(instructions, "COPY"):
        *sources, _ = value.split()
        copied |= {source.rstrip("/") for source in sources}
    options = setup_cfg["options"]
    package_dirs = {name.split(".")[0] for name in _lines(options["packages"])}
    package_dirs |= {line.split("=")[1].strip() for line in _lines(options["package_dir"])}
    long_description = setup_cfg["metadata"]["long_description"].removeprefix("file:").strip()

    assert "configs" in package_dirs
    assert copied == package_dirs | {long_description, "setup.cfg", "pyproject.toml"}
    ignore = [line for line in _lines((REPO_ROOT / ".dockerignore").read_text()) if not line.startswith("#")]
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert ignore[0] == "*" and allowed == copied


def test_it_runs_harness_train_as_a_non_root_user_from_outside_the_sources(instructions, setup_cfg):
    names = [instruction for instruction, _ in instructions]
    (user,) = _values(instructions, "USER")
    install = next(i for i, (name, value) in enumerate(instructions) if name == "RUN" and "pip install" in value)

    assert user.split(":")[0] not in ("root", "0")
    assert names.index("USER") > install
    assert json.loads(_values(instructions, "ENTRYPOINT")[0]) == ["harness-train"]
    assert "harness-train = harness.train.cli:run" in _lines(setup_cfg["options.entry_points"]["console_scripts"])
    assert _values(instructions, "WORKDIR")[-1] != "/src" and "rm -rf /src" in instructions[install][1]


def test_launch_gke_help_and_the_dockerfile_give_the_same_build_and_push_commands():
    help_text = subprocess.run([sys.executable, "-m", "launch.gke", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0, failure_report(help_text)
    commands = BUILD_AND_PUSH.findall(help_text.stdout)

    assert commands == ["docker build -t us-docker.pkg.dev/PROJECT/REPO/podharness:TAG .",
                        "docker push us-docker.pkg.dev/PROJECT/REPO/podharness:TAG"]
    assert BUILD_AND_PUSH.findall((REPO_ROOT / "Dockerfile").read_text()) == commands
