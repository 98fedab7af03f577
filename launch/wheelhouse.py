"""Build a wheelhouse on the launching machine for the TPU workers' platform and Python,
so workers without internet install everything with `--no-index`.

    python -m launch.wheelhouse --out wheelhouse/          # then:
    bash launch/tpu_pod.sh ... --wheelhouse wheelhouse/

It runs `pip download --only-binary=:all: --platform manylinux2014_x86_64 --python-version
3.11 --implementation cp -d OUT -r <requirements> uv`: pip resolves the dependencies for
the workers, not for this machine, and takes wheels only (nothing is built on a worker).
OUT/requirements.txt is the exact list the workers then install (launch/requirements.py:
setup.cfg's install_requires plus --extras). What the real run downloads from PyPI: the
wheels of jax, jaxlib and libtpu (a 213 MB wheel) and of the rest of the requirements
(orbax, tensorstore, wandb, ...; several hundred MB in all), and uv's wheel
(about 20 MB), which workers without uv unpack to make their venv. The launcher copies the
whole directory to every worker on each launch. `--no_index --find_links DIR` builds it
from wheels already on this machine instead, with no network at all (the tests do).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from launch.requirements import requirements

PIP_TIMEOUT_S = 3600.0
DEFAULT_PLATFORM = "manylinux2014_x86_64"
DEFAULT_PYTHON = "3.11"


def download_argv(out: Path, requirements_file: Path, *, platform: str, python_version: str,
                  with_uv: bool, find_links: Sequence[Path], no_index: bool) -> list[str]:
    """The `pip download` command line (as a list) that fills `out`."""
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
            "--platform", platform, "--python-version", python_version, "--implementation", "cp",
            "-d", str(out), "-r", str(requirements_file)]
    for path in find_links:
        argv += ["--find-links", str(path)]
    if no_index:
        argv.append("--no-index")
    if with_uv:
        argv.append("uv")
    return argv


def build(repo: Path, out: Path, *, extras: Sequence[str], platform: str = DEFAULT_PLATFORM,
          python_version: str = DEFAULT_PYTHON, with_uv: bool = True,
          find_links: Sequence[Path] = (), no_index: bool = False) -> list[str]:
    """Fill `out` with wheels and requirements.txt; returns the requirements.
    Raises subprocess.CalledProcessError (pip's message is on stderr) or ValueError."""
    wanted = requirements(repo / "setup.cfg", extras)
    out.mkdir(parents=True, exist_ok=True)
    requirements_file = out / "requirements.txt"
    requirements_file.write_text("".join(f"{line}\n" for line in wanted))
    subprocess.run(download_argv(out, requirements_file, platform=platform, python_version=python_version,
                                 with_uv=with_uv, find_links=find_links, no_index=no_index),
                   check=True, timeout=PIP_TIMEOUT_S)
    return wanted


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.wheelhouse", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to fill (made if missing)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository whose setup.cfg to read")
    parser.add_argument("--extras", default="tpu", help="comma-separated extras (default: tpu)")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, help=f"workers' platform tag ({DEFAULT_PLATFORM})")
    parser.add_argument("--python_version", default=DEFAULT_PYTHON, help=f"workers' Python ({DEFAULT_PYTHON})")
    parser.add_argument("--no_uv", action="store_true", help="leave uv out (workers that have Python >= 3.11 with venv)")
    parser.add_argument("--find_links", type=Path, action="append", default=[], help="also look for wheels here")
    parser.add_argument("--no_index", action="store_true", help="only --find_links, no PyPI")
    args = parser.parse_args(argv)
    try:
        wanted = build(args.repo, args.out, extras=[e for e in args.extras.split(",") if e],
                       platform=args.platform, python_version=args.python_version, with_uv=not args.no_uv,
                       find_links=args.find_links, no_index=args.no_index)
    except ValueError as error:
        print(f"launch.wheelhouse: {error}", file=sys.stderr)
        return 2
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        print(f"launch.wheelhouse: pip download failed ({error})", file=sys.stderr)
        return 1
    print(f"launch.wheelhouse: {len(wanted)} requirements for Python {args.python_version} on "
          f"{args.platform} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
