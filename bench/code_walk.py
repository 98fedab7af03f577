"""The walk: the route a reader takes through the code, following argv from
`harness/train/cli.py:main` through a real run.

    python -m bench.code_walk                    # a --config smoke run, compact report
    python -m bench.code_walk --json             # the same, as one JSON document
    python -m bench.code_walk -- --config cpu-8-devices --num_train_steps 20   # other harness-train flags

A resume's walk, from a checkpoint written first (the flags name the directories, and
`--resume` keeps them):

    harness-train --config smoke --num_train_steps 6 --overwrite --checkpoint_dir /tmp/w/c --run_dir /tmp/w/r
    python -m bench.code_walk -- --config smoke --resume --checkpoint_dir /tmp/w/c --run_dir /tmp/w/r

Definition. A real `harness-train` (`cli.main(argv)`, by default `--config smoke
--overwrite` into a temporary directory) runs in this process under `sys.settrace` on
the main thread: the route argv takes. (The bodies of the threads it starts, the input
prefetch, the watchdog and the output writer, are walks of their own.) A reader reads
each function of harness/ or launch/ once, at its first call, so the walk is the
sequence of first calls, each with the harness functions below it on the stack. Nested
functions, lambdas and comprehensions are read with the function around them; module
and class bodies, and what they call while a module is imported, with the module's
definitions: they are not on the route.
- A *room* is a module; a *stay* is a maximal run of consecutive first calls in one module.
- A *climb back up* is a stay entered in a module that is already on the call stack
  below the previous function read (among its callers still running): the reader goes
  back to a caller's module to read on there, instead of descending into a callee.
- A module's *re-entries* are its stays beyond the first.
The route prints each stay's module, `^` marking a climb back up. tests/test_code_walk.py
keeps the smoke route at 12 climbs or fewer (issue 19); docs/architecture.md has the numbers.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import io
import json
import sys
import tempfile
from pathlib import Path
from types import CodeType, FrameType
from typing import NamedTuple

import harness

PACKAGES = ("harness", "launch")
SOURCE_ROOT = Path(harness.__file__).resolve().parent.parent  # the tree whose harness is imported
DEFAULT_FLAGS = ("--config", "smoke")
TOP_REENTERED = 5


class Read(NamedTuple):
    module: str        # "train/loop": the path under harness/ (launch/ keeps its prefix)
    function: str      # the qualified name
    climb: bool        # starts a stay in a module that was on the stack below the previous read


class _Tracer:
    """Records first calls; cheap for every other call (one dict lookup per frame)."""

    def __init__(self) -> None:
        self.reads: list[Read] = []
        self._modules: dict[str, str | None] = {}   # filename -> module, or None outside the packages
        self._seen: set[CodeType] = set()
        self._previous: list[FrameType] = []        # the previous read's harness callers, kept alive

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        if code not in self._seen:
            self._seen.add(code)
            module = self._function_module(code)
            if module is not None and not code.co_name.startswith("<") and "<locals>" not in code.co_qualname:
                self._read(frame, module, code.co_qualname)
        return None  # no tracing inside the frame

    def _function_module(self, code: CodeType) -> str | None:
        """The module of a function's code; None for other code and for module and class
        bodies."""
        return self._module(code.co_filename) if code.co_flags & inspect.CO_OPTIMIZED else None

    def _module(self, filename: str) -> str | None:
        if filename not in self._modules:
            path = Path(filename).resolve()
            parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts if path.is_relative_to(SOURCE_ROOT) else ()
            inside = path.suffix == ".py" and len(parts) > 1 and parts[0] in PACKAGES
            self._modules[filename] = "/".join(parts[1:] if parts[0] == "harness" else parts) if inside else None
        return self._modules[filename]

    def _read(self, frame: FrameType, module: str, function: str) -> None:
        callers: list[FrameType] = []  # innermost first
        below = frame.f_back
        while below is not None:
            if below.f_code.co_name == "<module>" and self._module(below.f_code.co_filename) is not None:
                return  # called while a module is imported: read with its definitions, not on the route
            if self._function_module(below.f_code) is not None:
                callers.append(below)
            below = below.f_back
        alive = {id(caller) for caller in callers}
        still_below = {self._module(f.f_code.co_filename) for f in self._previous if id(f) in alive}
        new_stay = not self.reads or self.reads[-1].module != module
        self.reads.append(Read(module, function, climb=bool(self.reads) and new_stay and module in still_below))
        self._previous = callers


class Walk(NamedTuple):
    reads: list[Read]

    def stays(self) -> list[tuple[str, bool, int]]:
        """(module, entered by a climb, functions read) for each stay, in order."""
        stays: list[tuple[str, bool, int]] = []
        for read in self.reads:
            if stays and stays[-1][0] == read.module:
                stays[-1] = (read.module, stays[-1][1], stays[-1][2] + 1)
            else:
                stays.append((read.module, read.climb, 1))
        return stays

    def summary(self) -> dict:
        stays = self.stays()
        visits = collections.Counter(module for module, _, _ in stays)
        reentered = {module: n - 1 for module, n in visits.most_common() if n > 1}
        return {"rooms": len(visits), "stays": len(stays), "climbs": sum(climb for _, climb, _ in stays),
                "functions": len(self.reads), "reentries": reentered,
                "route": [("^" if climb else "") + module for module, climb, _ in stays]}


def walk(flags: list[str]) -> tuple[Walk, int, str]:
    """Runs `harness-train FLAGS` here under the tracer: the walk, main's exit code and
    what the run printed."""
    from harness.train.cli import main

    tracer = _Tracer()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sys.settrace(tracer)
        try:
            code = main(flags)
        finally:
            sys.settrace(None)
    return Walk(tracer.reads), code, printed.getvalue()


def report(flags: list[str], summary: dict) -> str:
    reentered = ", ".join(f"{module} {n}" for module, n in list(summary["reentries"].items())[:TOP_REENTERED])
    return "\n".join([
        f"walk of harness-train {' '.join(flags)}",
        f"rooms: {summary['rooms']}, stays: {summary['stays']}, climbs back up: {summary['climbs']}, "
        f"functions read: {summary['functions']}",
        f"re-entered most: {reentered or 'none'}",
        "route: " + " > ".join(summary["route"]),
    ])


def _with_directories(flags: list[str], tmp: str) -> list[str]:
    """`flags`, with a run dir and a checkpoint dir in `tmp` where they name none, and
    `--overwrite` unless they resume."""
    named = {flag.split("=")[0] for flag in flags}
    for names, value in ((("--run_dir", "--run.run_dir"), f"{tmp}/run"),
                         (("--checkpoint_dir", "--checkpoint.dir"), f"{tmp}/checkpoints")):
        if not named & set(names):
            flags = [*flags, names[0], value]
    return flags if "--resume" in named else [*flags, "--overwrite"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document (every read too)")
    parser.add_argument("flags", nargs="*", help="harness-train flags after `--` (default: --config smoke)")
    args = parser.parse_args()
    given = args.flags or list(DEFAULT_FLAGS)
    with tempfile.TemporaryDirectory(prefix="code_walk_") as tmp:
        result, code, printed = walk(_with_directories(given, tmp))
    if code != 0:
        print(printed, end="")
        print(f"bench.code_walk: harness-train {' '.join(given)} exited {code}", file=sys.stderr)
        return code
    summary = result.summary()
    if args.json:
        print(json.dumps({**summary, "flags": given, "reads": [read._asdict() for read in result.reads]}, indent=1))
        return 0
    print(report(given, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
