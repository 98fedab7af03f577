"""The files a run can execute, each with a digest, and which of them differ between
two hosts: what the consistency gate (consistency.py) compares, so that a host with an
older checkout is named together with the files to sync.

The files: every file of the `harness` and `launch` packages as they are on disk (not
only the modules imported so far: the loop, the step and the models are imported after
the check runs), the `--config` preset and its `base` chain, and the user's model file
when `--model` names one outside those packages. Each file is known by a label, its
path relative to its package's parent (`harness/train/loop.py`, `configs/smoke.toml`;
a preset or model given as a path keeps the path as given), and the first 16 hex digits
of the sha256 of its bytes. Compiled caches (`__pycache__`, `.pyc`) are not the code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tomllib
from collections.abc import Iterable, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path

from harness.config import CONFIGS_DIR
from harness.models.names import BUILTIN_MODELS, is_import_path

PACKAGES = ("harness", "launch")
DIGEST_CHARS = 16
UNREADABLE = "unreadable"  # the digest of a file this host cannot read
MAX_PRESET_CHAIN = 32  # load_preset refuses cycles; this bounds the walk regardless

FileDigest = tuple[str, str]  # (label, digest)


def package_files(package: str) -> dict[str, Path]:
    """label -> path of every file in `package`'s directory, as the import system finds it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = Path(next(iter(spec.submodule_search_locations)))
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and "__pycache__" not in relative.parts and path.suffix not in (".pyc", ".pyo"):
            files[f"{package}/{relative.as_posix()}"] = path
    return files


def preset_files(preset: str | None) -> dict[str, Traversable]:
    """label -> file of the preset `--config` names and of each `base` it builds on
    (a shipped preset may be package data rather than a path)."""
    files: dict[str, Traversable] = {}
    name = preset
    while name and len(files) < MAX_PRESET_CHAIN:
        label, path = ((name, Path(name)) if name.endswith(".toml") else
                       (f"configs/{name}.toml", CONFIGS_DIR / f"{name}.toml"))
        if label in files:
            break
        files[label] = path
        try:
            base = tomllib.loads(path.read_text(encoding="utf-8")).get("base")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            break
        name = base if isinstance(base, str) else None
    return files


def model_files(model: str) -> dict[str, Path]:
    """label -> path of the user's model module: the file of `path/to/model.py:factory`,
    or the file `pkg.module:factory` imports from (labelled by the module's name)."""
    if model in BUILTIN_MODELS or not is_import_path(model):
        return {}
    module = model.rpartition(":")[0]
    if module.endswith(".py"):
        return {module: Path(module)}
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return {}
    origin = spec.origin if spec is not None else None
    return {module: Path(origin)} if origin and Path(origin).is_file() else {}


def file_digest(path: Traversable) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:DIGEST_CHARS]
    except OSError:
        return UNREADABLE


def code_files(preset: str | None, model: str) -> tuple[FileDigest, ...]:
    """Every file the run can execute, sorted by label. A model module inside the
    packages is already among their files."""
    packages = {label: path for package in PACKAGES for label, path in package_files(package).items()}
    inside = {path.resolve() for path in packages.values()}
    user_model = {label: path for label, path in model_files(model).items() if path.resolve() not in inside}
    files: dict[str, Traversable] = {**packages, **user_model, **preset_files(preset)}
    return tuple((label, file_digest(files[label])) for label in sorted(files))


def fingerprint(files: Sequence[FileDigest], salt: str = "") -> str:
    """One value for the whole list: `<16 hex> (<N> files)`."""
    digest = hashlib.sha256(salt.encode())
    for label, file_hash in files:
        digest.update(f"{label}\0{file_hash}\n".encode())
    return f"{digest.hexdigest()[:DIGEST_CHARS]} ({len(files)} files)"


def differing(here: Iterable[FileDigest], pod: Iterable[FileDigest]) -> list[str]:
    """The labels whose digest differs, or that only one side has, sorted; a file only
    this host has says `(only here)`, one it lacks `(missing here)`."""
    mine, theirs = dict(here), dict(pod)
    found = []
    for label in sorted(mine.keys() | theirs.keys()):
        if label not in theirs:
            found.append(f"{label} (only here)")
        elif label not in mine:
            found.append(f"{label} (missing here)")
        elif mine[label] != theirs[label]:
            found.append(label)
    return found


def name_some(labels: Sequence[str], limit: int) -> str:
    """`a, b (+3 more)`: the first `limit` labels, and how many are left."""
    named = ", ".join(labels[:limit])
    return named + (f" (+{len(labels) - limit} more)" if len(labels) > limit else "")
