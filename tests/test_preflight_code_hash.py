"""Preflight's code consistency: every file the run can execute is hashed, and a host
whose files differ is named with the files to sync.

The fault is made the way a pod makes it: host 1 of a real 2-process preflight
(launch.local, jax.distributed over gloo) runs from a copy of the tree in which
harness/train/loop.py gained one comment line, a module preflight never imports itself.

    .venv/bin/python -m pytest -q tests/test_preflight_code_hash.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from harness.preflight import code_tree, consistency
from harness.preflight.results import FAIL, PASS, HostReport
from harness.preflight.wire import MAX_CODE_FILES, MAX_VALUE_CHARS, decode_report, encode_report
from tests.support.runs import REPO_ROOT, compile_cache_flags, failure_report, harness_env, host_lines, launch_local

POD_TIMEOUT_S = 180
TREE = ("harness", "launch", "configs", "setup.cfg")


def copy_of_the_tree(destination: Path) -> Path:
    """What a host with an older checkout has on disk: the repository's code, copied."""
    destination.mkdir()
    for name in TREE:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / name)
    return destination


def test_a_host_running_a_changed_copy_of_the_tree_is_named_with_the_file(tmp_path: Path) -> None:
    copy = copy_of_the_tree(tmp_path / "older-checkout")
    with (copy / "harness" / "train" / "loop.py").open("a") as loop:
        loop.write("# a line the other host does not have\n")
    preflight = shlex.join([sys.executable, "-m", "harness.preflight", "--config", "local-2x4",
                            "--run_dir", str(tmp_path / "run"), "--checkpoint_dir", str(tmp_path / "ckpt"),
                            "--checks", "consistency", *compile_cache_flags(tmp_path / "cache")])
    where = shlex.join([sys.executable, "-c", "import harness; print('harness from', harness.__file__)"])
    script = (f'if [ "$HARNESS_PROCESS_ID" = 1 ]; then cd {shlex.quote(str(copy))}; '
              f'export PYTHONPATH={shlex.quote(str(copy))}; fi; {where} && exec {preflight}')
    result = launch_local(2, 4, ["sh", "-c", script], timeout=POD_TIMEOUT_S, env=harness_env())
    assert result.returncode == 1, failure_report(result)
    assert f"harness from {REPO_ROOT / 'harness' / '__init__.py'}" in host_lines(result.stdout, 0)
    assert f"harness from {copy / 'harness' / '__init__.py'}" in host_lines(result.stdout, 1)
    report = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert [(f["check"], f["host"]) for f in report["failures"]] == [("consistency", 1)], report["failures"]
    failure = report["failures"][0]
    assert failure["value"] == "code differs from the pod's in harness/train/loop.py", failure
    assert "harness/train/loop.py" in failure["detail"]
    assert ("harness-preflight: FAIL: host 1: consistency: code differs from the pod's in harness/train/loop.py"
            in result.stdout), failure_report(result)


# --- code_tree.py and consistency.judge on plain data.

def test_every_file_of_the_packages_is_hashed_not_only_the_imported_modules() -> None:
    """The oracle: os.walk over the tree, whatever this process has imported."""
    for package in code_tree.PACKAGES:
        expected = set()
        for folder, dirs, names in os.walk(REPO_ROOT / package):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            relative = Path(folder).relative_to(REPO_ROOT)
            expected |= {(relative / n).as_posix() for n in names if not n.endswith((".pyc", ".pyo"))}
        assert set(code_tree.package_files(package)) == expected
    labels = dict(code_tree.code_files("local-2x4", "mlp"))
    assert {"harness/train/loop.py", "harness/train/step.py", "harness/models/transformer.py",
            "launch/local.py", "launch/worker_setup.sh"} <= set(labels)
    assert labels["harness/train/loop.py"] == hashlib.sha256(
        (REPO_ROOT / "harness/train/loop.py").read_bytes()).hexdigest()[:16]


def test_the_presets_in_use_are_the_config_chain_and_nothing_else(tmp_path: Path) -> None:
    chain = [label for label in code_tree.preset_files("local-2x4")]
    assert chain == ["configs/local-2x4.toml", "configs/smoke.toml", "configs/cpu-8-devices.toml", "configs/base.toml"]
    mine = tmp_path / "mine.toml"
    mine.write_text('base = "smoke"\n[run]\nnum_train_steps = 3\n')
    assert list(code_tree.preset_files(str(mine)))[:2] == [str(mine), "configs/smoke.toml"]
    assert code_tree.preset_files(None) == {}
    labels = [label for label, _ in code_tree.code_files("smoke", "mlp")]
    assert "configs/smoke.toml" in labels and "configs/local-2x4.toml" not in labels


def test_a_model_file_given_by_path_is_hashed_and_a_builtin_model_adds_nothing(tmp_path: Path) -> None:
    model = tmp_path / "my_model.py"
    model.write_text("def make_model(spec):\n    return None\n")
    with_model = dict(code_tree.code_files("smoke", f"{model}:make_model"))
    assert with_model[str(model)] == hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    assert set(with_model) - {str(model)} == {label for label, _ in code_tree.code_files("smoke", "transformer")}
    assert code_tree.model_files("harness.models.mlp:make_model") == {
        "harness.models.mlp": REPO_ROOT / "harness" / "models" / "mlp.py"}
    assert "harness.models.mlp" not in dict(code_tree.code_files("smoke", "harness.models.mlp:make_model"))


def test_the_files_that_differ_are_named_in_order() -> None:
    pod = [("configs/smoke.toml", "a" * 16), ("harness/models/transformer.py", "b" * 16),
           ("harness/train/loop.py", "c" * 16), ("launch/old.py", "d" * 16)]
    here = [("configs/smoke.toml", "a" * 16), ("harness/models/transformer.py", "0" * 16),
            ("harness/train/loop.py", "1" * 16), ("harness/train/new.py", "e" * 16)]
    assert code_tree.differing(here, pod) == ["harness/models/transformer.py", "harness/train/loop.py",
                                              "harness/train/new.py (only here)", "launch/old.py (missing here)"]
    assert code_tree.differing(pod, pod) == []
    assert code_tree.name_some(["a", "b", "c", "d", "e"], 2) == "a, b (+3 more)"
    assert code_tree.name_some(["a"], 2) == "a"
    assert code_tree.fingerprint(pod) == code_tree.fingerprint(list(pod)) != code_tree.fingerprint(here)
    assert code_tree.fingerprint(pod).endswith(" (4 files)") and code_tree.fingerprint(pod, salt="x") != \
        code_tree.fingerprint(pod)


def _report(host: int, files: list[tuple[str, str]], step: str = "0123456789abcdef") -> HostReport:
    facts = {"jax": "0.10.2", consistency.CODE: code_tree.fingerprint(files), "train step": step}
    return HostReport(host, f"vm-{host}", 100 + host, facts, code_files=tuple(files))


def test_the_host_whose_code_differs_is_named_with_the_files_to_sync() -> None:
    pod = [(f"harness/m{i}.py", f"{i:016x}") for i in range(6)]
    stale = [(label, "f" * 16 if i in (1, 2, 4, 5) else digest) for i, (label, digest) in enumerate(pod)]
    cells = consistency.judge({0: _report(0, pod), 1: _report(1, pod), 2: _report(2, stale)})
    assert [cells[h].status for h in range(3)] == [PASS, PASS, FAIL]
    assert cells[2].value == "code differs from the pod's in harness/m1.py, harness/m2.py (+2 more)"
    assert cells[2].detail.endswith("on host(s) 0, 1 (files that differ from host 0's: harness/m1.py, harness/m2.py, "
                                    "harness/m4.py, harness/m5.py)")
    both = consistency.judge({0: _report(0, pod), 1: _report(1, stale, step="fedcba9876543210")})
    assert both[1].value == "code differs from the pod's in harness/m1.py, harness/m2.py (+2 more) (+1)"
    assert "train step: fedcba9876543210 here vs 0123456789abcdef" in both[1].detail


def test_code_files_cross_the_wire_bounded() -> None:
    files = tuple((f"harness/{'x' * 250}{i:05d}.py", f"{i:016x}") for i in range(MAX_CODE_FILES + 10))
    decoded = decode_report(encode_report(HostReport(1, "vm", 1, code_files=files)), source="test")
    assert len(decoded.code_files) == MAX_CODE_FILES
    assert decoded.code_files[0] == (files[0][0][:MAX_VALUE_CHARS], files[0][1])
    small = (("harness/a.py", "0" * 16), ("configs/smoke.toml", code_tree.UNREADABLE))
    assert decode_report(encode_report(HostReport(1, "vm", 1, code_files=small)), source="t").code_files == small
