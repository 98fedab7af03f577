"""A stock TPU VM worker for the fake pod, and the wheels its tests install.

A stock worker (Ubuntu 22.04 TPU VM image) has python3 3.10 and maybe no python3-venv or
pip; some have no internet. `stock_worker_path` builds the directory that is the
worker's whole PATH (FAKE_GCLOUD_WORKER_PATH): links to the basic tools the remote
scripts need, and no network tools; `python3` is tests/support/fake_worker_bin/python3
(3.10, no ensurepip), `python3.11` a real interpreter only when asked. "PyPI" is a local
directory of wheels (FAKE_WORKER_PYPI), reachable when FAKE_WORKER_INTERNET=1. Wheels are
written by hand (a wheel is a zip with a dist-info), so nothing is built or downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

FAKE_WORKER_BIN = Path(__file__).resolve().parent / "fake_worker_bin"
# What launch/remote_script.py's scripts and launch/worker_setup.sh may use on a worker.
WORKER_TOOLS = ("bash", "sh", "env", "cat", "cp", "mv", "rm", "mkdir", "ls", "find", "grep", "head",
                "tail", "sort", "cut", "xargs", "seq", "sleep", "touch", "chmod", "basename", "dirname",
                "sha256sum", "tar", "gzip", "readlink")
STANDIN_DEP = "podharness_standin_dep"


def base_python() -> str:
    """The interpreter this test venv was made from (a real CPython 3.11, outside any venv)."""
    return getattr(sys, "_base_executable", sys.executable)


def stock_worker_path(directory: Path, *, with_python311: bool = False) -> str:
    """Make `directory` a worker's only PATH entry; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in WORKER_TOOLS:
        found = shutil.which(tool)
        if found is None:
            raise FileNotFoundError(f"{tool} is not installed here; the fake worker needs it")
        (directory / tool).symlink_to(found)
    (directory / "python3").symlink_to(FAKE_WORKER_BIN / "python3")
    if with_python311:
        (directory / "python3.11").symlink_to(base_python())
    return str(directory)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(directory: Path, name: str, version: str, files: dict[str, bytes], tag: str = "py3-none-any",
                modes: dict[str, int] | None = None) -> Path:
    """A wheel holding `files` (paths inside the wheel), with its dist-info."""
    dist_info = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{dist_info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: fake\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()
    record = [_record_line(path, data) for path, data in contents.items()] + [f"{dist_info}/RECORD,,"]
    contents[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{name}-{version}-{tag}.whl"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in contents.items():
            info = zipfile.ZipInfo(member)
            info.external_attr = ((modes or {}).get(member, 0o644)) << 16
            wheel.writestr(info, data)
    return path


def standin_dep_wheel(directory: Path) -> Path:
    """The stand-in repository's one requirement, podharness-standin-dep==1.0."""
    return write_wheel(directory, STANDIN_DEP, "1.0", {f"{STANDIN_DEP}/__init__.py": b"VERSION = '1.0'\n"})


def fake_uv_wheel(directory: Path) -> Path:
    """A uv wheel whose binary is the fake uv (as in uv's real wheels, under .data/scripts)."""
    script = (FAKE_WORKER_BIN / "uv").read_bytes()
    member = "uv-0.13.8.data/scripts/uv"
    return write_wheel(directory, "uv", "0.13.8", {member: script}, modes={member: 0o755})


def python_dist(directory: Path) -> Path:
    """A stand-in python-build-standalone install_only archive: python/bin/python3 runs a real
    Python 3.11 (FAKE_WORKER_REAL_PYTHON)."""
    script = b'#!/usr/bin/env bash\nexec "$FAKE_WORKER_REAL_PYTHON" "$@"\n'
    path = directory / "cpython-3.11-fake-x86_64-unknown-linux-gnu-install_only.tar.gz"
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("python/bin/python3")
        info.size, info.mode = len(script), 0o755
        archive.addfile(info, io.BytesIO(script))
    return path
