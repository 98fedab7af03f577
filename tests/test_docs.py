"""The README and docs/ point at things that exist: every relative link resolves, and
every `make` target, console script and `python -m` module they name is real.

    .venv/bin/python -m pytest -q tests/test_docs.py
"""

from __future__ import annotations

import configparser
import importlib.util
import re
from pathlib import Path

import pytest

from tests.support.runs import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAKE = re.compile(r"(?:^|[`(]|&& )make ([a-z][\w-]*)", re.MULTILINE)  # a command, not the verb
SCRIPT = re.compile(r"(?<![\w/.-])(harness-[a-z-]+)")
MODULE = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")
README_LINES = 250


def _ids(pages: list[Path]) -> list[str]:
    return [str(page.relative_to(REPO_ROOT)) for page in pages]


def make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return {match.group(1) for match in re.finditer(r"^([a-z][\w-]*):", text, re.MULTILINE)}


def console_scripts() -> set[str]:
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    entries = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return {entry.split("=")[0].strip() for entry in entries}


def test_the_readme_fits_in_one_screens_scroll() -> None:
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= README_LINES


def test_the_readme_lists_every_docs_page() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme] == []


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_make_target_console_script_and_module_named_exists(page: Path) -> None:
    text = page.read_text()
    assert sorted(set(MAKE.findall(text)) - make_targets()) == []
    assert sorted(set(SCRIPT.findall(text)) - console_scripts()) == []
    missing = sorted(name for name in set(MODULE.findall(text)) if importlib.util.find_spec(name) is None)
    assert missing == []
