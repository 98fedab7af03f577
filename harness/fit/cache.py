"""Compile outcomes on disk, so asking harness-fit the same question again compiles
nothing.

The key is a sha256 over everything that could change the compiler's answer: the
lowered step as StableHLO text (model, shapes, dtypes, shardings, remat, optimizer:
the settings as the compiler sees them, so a changed model file is a new key with no
list of settings to keep in step), the TPU target (topology, chip config, slices), the
versions of jax, jaxlib and libtpu, and the XLA/libtpu flags in the environment. An
entry is the outcome as JSON (never pickle), written whole or not at all; an entry that
does not read back is compiled again and replaced.

Where: `--fit_cache_dir`, by default `$XDG_CACHE_HOME/podharness/fit`
(`~/.cache/podharness/fit`), not the run directory: the answer belongs to the program
and the target, not to a run, so `make fit` into a fresh `--run_dir` still finds it.
`--fit_cache_dir ''` turns the cache off. Entries are a few KB.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

from harness.fit.compile import CompileOutcome
from harness.fit.topology import Target

FORMAT = 2  # 2: outcomes carry the host temporaries (remat offload)
_FLAG_VARIABLES = ("XLA_FLAGS", "LIBTPU_INIT_ARGS")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "podharness" / "fit")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def compiler_identity() -> dict[str, str]:
    """What besides the program and the target decides the compiler's answer."""
    identity = {package: _version(package) for package in ("jax", "jaxlib", "libtpu")}
    identity.update({name: os.environ.get(name, "") for name in _FLAG_VARIABLES})
    return identity


def cache_key(lowered_text: str, target: Target) -> str:
    header = json.dumps({"format": FORMAT, "topology": target.topology, "chip_config": target.chip_config,
                         "num_slices": target.num_slices, **compiler_identity()},
                        sort_keys=True)
    digest = hashlib.sha256(header.encode())
    digest.update(b"\0")
    digest.update(lowered_text.encode())
    return digest.hexdigest()


class OutcomeCache:
    """One JSON file per key under `directory`; `directory=""` stores nothing."""

    def __init__(self, directory: str):
        self.directory = Path(directory) if directory else None

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str, *, census: bool = False) -> CompileOutcome | None:
        """The stored outcome; None if absent, unreadable, or a fit without the census
        now asked for."""
        if self.directory is None:
            return None
        try:
            entry = json.loads(self._path(key).read_text())
            if entry.get("format") != FORMAT or entry.get("key") != key:
                return None
            outcome = CompileOutcome.from_dict(entry["outcome"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if census and outcome.fits and outcome.census is None:
            return None
        outcome.cached = True
        return outcome

    def put(self, key: str, outcome: CompileOutcome) -> None:
        """Best effort: a cache that cannot be written costs a compile next time, never
        this run."""
        if self.directory is None:
            return
        path = self._path(key)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"format": FORMAT, "key": key, "outcome": outcome.to_dict()}))
            os.replace(partial, path)
        except OSError:
            partial.unlink(missing_ok=True)
