"""A regular (non-editable) install has everything: every package, the presets, the
console scripts, and runs `--config smoke` from a directory that is not the repository.

The wheel is built once, offline (`pip wheel --no-deps --no-build-isolation` with the
setuptools the `test` extra pins), from a copy of the tree, and installed with
`--no-deps` into a fresh venv whose only view of the dependencies is a `.pth` line naming
the project venv's site-packages (a path there, not a site dir, so its editable-install
hook is not run and `harness` can only come from the wheel).

    .venv/bin/python -m pytest -q tests/test_packaging.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from harness.config import available_presets
from tests.support.runs import REPO_ROOT, failure_report, harness_env

# What setup.cfg's metadata and packages are built from.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "harness", "launch", "configs")
TIMEOUT_S = 300


def _tree_packages() -> list[str]:
    """Every package directory of the tree, as the wheel should name its __init__.py."""
    inits = [p for root in ("harness", "launch") for p in (REPO_ROOT / root).rglob("__init__.py")
             if "__pycache__" not in p.parts]
    return sorted(p.relative_to(REPO_ROOT).as_posix() for p in inits)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    assert build.returncode == 0, failure_report(build)
    (path,) = out.glob("podharness-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """A fresh venv with the wheel installed (no deps): its bin/ and site-packages."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT_S)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True, timeout=60).strip())
    (site / "project_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert install.returncode == 0, failure_report(install)
    return venv / "bin", site


def _outside_env() -> dict[str, str]:
    env = harness_env()
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def test_the_wheel_holds_every_package_and_every_preset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())

    assert [p for p in _tree_packages() if p not in names] == []
    presets = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.toml"))
    assert {f"harness/presets/{name}.toml" for name in presets} <= names
    assert not any(name.startswith(("configs/", "tests/")) for name in names)


def test_a_regular_install_runs_the_smoke_preset_from_another_directory(installed, tmp_path):
    bin_dir, site = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _outside_env()

    where = subprocess.run([str(bin_dir / "python"), "-c", "import harness.config as c; print(c.CONFIGS_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, failure_report(where)
    assert where.stdout.strip() == str(site / "harness" / "presets")

    listing = subprocess.run([str(bin_dir / "harness-train"), "--list_configs"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, failure_report(listing)
    assert [line.split()[0] for line in listing.stdout.splitlines()] == available_presets()

    run = subprocess.run(
        [str(bin_dir / "harness-train"), "--config", "smoke", "--num_train_steps", "2", "--no_wandb",
         "--cpu_devices", "1", "--fsdp_devices", "1",  # one device compiles fastest
         "--run_dir", str(tmp_path / "run"), "--checkpoint_dir", str(tmp_path / "checkpoints"),
         "--compilation_cache_dir", str(tmp_path / "jax_cache")],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, failure_report(run)
    assert re.search(r"^Step\s+0: loss=", run.stdout, re.MULTILINE), failure_report(run)
    assert os.listdir(elsewhere) == []
