"""The pinned packages a worker installs: setup.cfg's install_requires plus extras.

    python -m launch.requirements --extras tpu > requirements.txt

Workers install these and run the harness from the unpacked release (`python -m
harness.train` with the release as working directory), so nothing is built on a worker:
with a wheelhouse (launch/wheelhouse.py) every package is a wheel already.
"""

from __future__ import annotations

import argparse
import configparser
import sys
from collections.abc import Sequence
from pathlib import Path


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def requirements(setup_cfg: Path, extras: Sequence[str]) -> list[str]:
    """install_requires, then each extra's requirements, in file order; ValueError on an
    extra setup.cfg does not define."""
    parser = configparser.ConfigParser()
    if not parser.read(setup_cfg):
        raise ValueError(f"cannot read {setup_cfg}")
    found = _lines(parser.get("options", "install_requires", fallback=""))
    defined = parser["options.extras_require"] if parser.has_section("options.extras_require") else {}
    for extra in extras:
        if extra not in defined:
            raise ValueError(f"{setup_cfg} defines no extra {extra!r} (has: {', '.join(defined) or 'none'})")
        found.extend(_lines(defined[extra]))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.requirements", description=__doc__.splitlines()[0])
    parser.add_argument("--setup_cfg", type=Path, default=Path("setup.cfg"))
    parser.add_argument("--extras", default="", help="comma-separated extras (e.g. tpu)")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.setup_cfg, [e for e in args.extras.split(",") if e])
    except ValueError as error:
        print(f"launch.requirements: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
