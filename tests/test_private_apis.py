"""Private APIs: where the harness may use them, and whether the pinned libraries still
have them.

Every private use in harness/ and launch/ (an import of a module path with a `_` part,
`from X import _y`, `x._name` on anything but self/cls, `getattr(x, "_name")`, ctypes)
must sit in the one module that owns that library's internals (OWNERS). The rest of
this file checks, against the installed libraries, each private thing those modules use.

    .venv/bin/python -m pytest -q tests/test_private_apis.py
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("harness", "launch", "tests")
# The module that owns each library's private uses, and the libraries it may reach into.
OWNERS = {
    "harness/runtime/jax_internals.py": {"jax", "jaxlib"},
    "harness/runtime/orbax_internals.py": {"orbax"},
    "harness/runtime/fast_exit.py": {"atexit"},
    "harness/runtime/sigterm.py": {"ctypes"},
}
DOCUMENTED = {"os._exit"}  # named with an underscore, yet public and documented
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}
REFLECTION = {"getattr", "hasattr", "setattr", "delattr"}


@dataclasses.dataclass(frozen=True)
class PrivateUse:
    path: str
    line: int
    library: str | None  # None where the object's library cannot be told from the source
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, path: str) -> list[PrivateUse]:
    """Every private use in one module's source, in line order."""
    tree = ast.parse(source)
    origins: dict[str, str] = {}  # a name bound by importing a library -> where it came from
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in PROJECT:
                    continue
                origins[alias.asname or root] = alias.name if alias.asname else root
                if any(_private(part) for part in alias.name.split(".")) or root == "ctypes":
                    uses.append(PrivateUse(path, node.lineno, root, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            root = node.module.split(".")[0]
            if root in PROJECT:
                continue
            for alias in node.names:
                origins[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            names = [alias.name for alias in node.names]
            if any(_private(part) for part in node.module.split(".")) or any(map(_private, names)) \
                    or root == "ctypes":
                uses.append(PrivateUse(path, node.lineno, root, f"from {node.module} import {', '.join(names)}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in NAMEDTUPLE_API:
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            origin = origins.get(base.id) if isinstance(base, ast.Name) else None
            if origin is not None and f"{origin}.{node.attr}" in DOCUMENTED:
                continue
            uses.append(PrivateUse(path, node.lineno, origin and origin.split(".")[0], ast.unparse(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in REFLECTION \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and _private(node.args[1].value):
            target = node.args[0]
            origin = origins.get(target.id) if isinstance(target, ast.Name) else None
            uses.append(PrivateUse(path, node.lineno, origin and origin.split(".")[0], ast.unparse(node)))
    return sorted(uses, key=lambda use: use.line)


def tree_private_uses() -> list[PrivateUse]:
    return [use for folder in ("harness", "launch") for file in sorted((REPO / folder).rglob("*.py"))
            for use in private_uses(file.read_text(), str(file.relative_to(REPO)))]


def test_the_scanner_finds_each_kind_of_private_use():
    source = "\n".join([
        "import os, signal",                                   # 1
        "import jax._src.distributed",                         # 2
        "from jax._src import clusters",                       # 3
        "from jaxlib import _jax",                             # 4
        "from orbax.checkpoint import args as ocp_args",       # 5: public
        "import atexit, ctypes",                               # 6
        "from harness.runtime import _helper",                 # 7: the project's own
        "atexit._run_exitfuncs()",                             # 8
        "os._exit(0)",                                         # 9: documented
        "checkpointer._barrier_sync_key_prefix",               # 10
        "getattr(manager, '_checkpointer', None)",             # 11
        "self._ok, cls._ok, point._replace(x=1)",              # 12: own attributes, namedtuple API
        "signal.__name__, getattr(x, '__qualname__')",         # 13: dunders
        "ocp_args._private",                                   # 14
    ])
    found = [(use.line, use.library, use.what) for use in private_uses(source, "m.py")]
    assert found == [
        (2, "jax", "import jax._src.distributed"),
        (3, "jax", "from jax._src import clusters"),
        (4, "jaxlib", "from jaxlib import _jax"),
        (6, "ctypes", "import ctypes"),
        (8, "atexit", "atexit._run_exitfuncs"),
        (10, None, "checkpointer._barrier_sync_key_prefix"),
        (11, None, "getattr(manager, '_checkpointer', None)"),
        (14, "orbax", "ocp_args._private"),
    ]


def test_private_apis_are_used_only_in_their_owning_modules():
    uses = tree_private_uses()
    outside = [str(use) for use in uses if use.path not in OWNERS]
    assert not outside, ("private APIs used outside their owning modules (move each into the module that owns its "
                         "library's internals, tests/test_private_apis.py OWNERS):\n" + "\n".join(outside))
    strays = [f"{use} ({use.library} is not owned there)" for use in uses
              if use.library is not None and use.library not in OWNERS[use.path]]
    assert not strays, "\n".join(strays)
    idle = sorted(set(OWNERS) - {use.path for use in uses})
    assert not idle, f"owning modules that no longer use any private API (drop them from OWNERS): {idle}"


# --- jax 0.10.2 (harness/runtime/jax_internals.py) ---------------------------------------


def test_the_pinned_jax_still_has_the_key_value_client_jax_internals_uses():
    import jax
    from jax._src import distributed as jax_distributed
    from jaxlib import _jax

    from harness.runtime.jax_internals import coordination_client

    public = [name for name in dir(jax.distributed) if "key" in name.lower() or "client" in name.lower()]
    assert not public, f"jax.distributed now has {public}: use it in harness/runtime/jax_internals.py instead"
    assert hasattr(jax_distributed.global_state, "client"), (
        "jax._src.distributed.global_state.client is gone: update jax_internals.coordination_client")
    assert coordination_client() is None  # this process never initialized jax.distributed
    expected = {
        "key_value_set": "key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None",
        "key_value_dir_get": "key_value_dir_get(self, key: str) -> list[tuple[str, str]]",
    }
    for method, signature in expected.items():
        doc = getattr(getattr(_jax.DistributedRuntimeClient, method, None), "__doc__", None) or ""
        assert doc.splitlines()[:1] == [signature], (
            f"DistributedRuntimeClient.{method} changed: {doc.splitlines()[:1]}, expected {signature!r};"
            " update harness/runtime/jax_internals.py")


def test_the_pinned_jax_still_has_the_cluster_detection_jax_internals_uses():
    from jax._src.clusters import ClusterEnv

    from harness.runtime.jax_internals import detect_cluster

    parameters = list(inspect.signature(ClusterEnv.auto_detect_unset_distributed_params).parameters)
    assert parameters == ["coordinator_address", "num_processes", "process_id", "local_device_ids",
                          "cluster_detection_method", "initialization_timeout"], parameters
    assert ClusterEnv._cluster_types and all(hasattr(e, "opt_in_only_method") and callable(e.is_env_present)
                                             for e in ClusterEnv._cluster_types)
    listing = [e for e in ClusterEnv._cluster_types if "_get_worker_list_in_slice" in vars(e)]
    assert {e.__name__ for e in listing} >= {"GceTpuCluster", "GkeTpuCluster"}, listing
    assert all(not inspect.signature(e._get_worker_list_in_slice).parameters for e in listing)
    assert detect_cluster(timeout_s=1) is None  # no cluster here: the call goes through and finds none


# --- orbax-checkpoint 0.12.8 (harness/runtime/orbax_internals.py) -------------------------


def test_orbax_still_builds_its_tensorstore_context_from_the_dicts_orbax_internals_edits(monkeypatch):
    """If this fails after an orbax upgrade, re-read orbax's `tensorstore_utils.get_ts_context`
    and change harness/runtime/orbax_internals.py to match, or --gcs_max_retries does nothing."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    from harness.runtime import storage

    for name in ("_BASE_TS_CONTEXT", "_DEFAULT_OCDBT_TS_CONTEXT"):
        spec = getattr(tensorstore_utils, name, None)
        assert isinstance(spec, dict), f"orbax's tensorstore_utils.{name} is gone (see the docstring)"
        monkeypatch.setattr(tensorstore_utils, name, copy.deepcopy(spec))  # restored after the test

    storage.configure_orbax_gcs_retries(storage.GcsRetryPolicy(max_retries=3, initial_delay_s=0.25, max_delay_s=4))

    for use_ocdbt in (True, False):
        retries = tensorstore_utils.get_ts_context(use_ocdbt=use_ocdbt)["gcs_request_retries"].to_json()
        assert retries == {"max_retries": 3, "initial_delay": "250ms", "max_delay": "4s"}, (
            f"orbax's get_ts_context(use_ocdbt={use_ocdbt}) no longer uses the dicts orbax_internals.py edits")


def test_an_orbax_without_the_dicts_is_refused_not_ignored(monkeypatch):
    from orbax.checkpoint._src.serialization import tensorstore_utils

    from harness.runtime import storage

    monkeypatch.delattr(tensorstore_utils, "_BASE_TS_CONTEXT")
    with pytest.raises(RuntimeError, match=r"^orbax tensorstore_utils\._BASE_TS_CONTEXT is gone; "):
        storage.configure_orbax_gcs_retries(storage.GcsRetryPolicy())


@pytest.mark.parametrize("async_save", [True, False])
def test_the_pinned_orbax_closes_every_restore_with_the_barrier_a_failed_host_joins(async_save, tmp_path):
    """checkpoint.py joins this barrier on a host whose restore raised, so that hosts agree
    instead of aborting on a collective mismatch; if orbax renames or moves it, look here."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.checkpointers import checkpointer

    from harness.runtime.orbax_internals import restore_barrier_name

    source = inspect.getsource(checkpointer.Checkpointer.restore)
    assert "'Checkpointer:restore'" in source and "multihost.sync_global_processes(" in source, source
    manager = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save), item_names=("state",))
    try:
        name = restore_barrier_name(manager)
    finally:
        manager.close()
    assert name == ("_Checkpointer:restore" if async_save else "Checkpointer:restore")


# --- CPython's atexit (harness/runtime/fast_exit.py) and glibc (harness/runtime/sigterm.py) --


def test_exit_now_runs_the_atexit_handlers_once_through_the_private_runner():
    script = ("import atexit\nfrom harness.runtime.fast_exit import exit_now\n"
              "atexit.register(print, 'handler ran', flush=True)\nexit_now(7)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (7, "handler ran\n"), result.stderr[-2000:]


def test_the_glibc_sigaction_layout_reads_what_python_installs():
    from harness.runtime.sigterm import current_action, takes_siginfo

    sa_onstack = 0x08000000  # CPython installs its handlers with SA_ONSTACK and an empty mask
    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        assert current_action(signal.SIGUSR2).handler == int(signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, lambda *_: None)
        action = current_action(signal.SIGUSR2)
        assert action.handler not in (None, int(signal.SIG_DFL), int(signal.SIG_IGN))
        assert action.flags & sa_onstack and not takes_siginfo(action), hex(action.flags)
        assert action.mask[0] == 0  # the kernel's 64 signals; glibc leaves the rest of its 1024 bits unset
    finally:
        signal.signal(signal.SIGUSR2, previous)
