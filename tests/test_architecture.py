"""The shape of the house: no import circle in harness/ or launch/ (deferred imports
inside functions count too: they hide a circle, they do not remove it), no module
over 400 lines, and pod launchers that load no jax.

    .venv/bin/python -m pytest -q tests/test_architecture.py
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.runs import REPO_ROOT

PACKAGES = ("harness", "launch")
MAX_LINES = 400
# launch/tpu_pod.sh runs the launcher with the launching machine's plain python3, which
# need not have jax; launch.worker_run starts before the harness on every worker. They
# may take the exit codes from harness/errors.py, and nothing else of the harness.
LAUNCHERS = ("launch.tpu_pod", "launch.local", "launch.worker_run")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle_and_only_that() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_project() -> None:
    assert circles(import_graph(_modules())) == []


def test_no_module_over_400_lines() -> None:
    counts = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    over = {name: n for name, n in counts.items() if n > MAX_LINES}
    assert over == {}, f"over {MAX_LINES} lines: " + ", ".join(f"{name} ({n})" for name, n in sorted(over.items()))


def test_the_launchers_load_no_jax_and_no_harness_module_but_the_exit_codes() -> None:
    code = ("import importlib, json, sys\n"
            f"for name in {LAUNCHERS!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('harness', 'jax', 'jaxlib'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["harness", "harness.errors"]
