#!/usr/bin/env bash
# Provision the Python that runs the harness on one TPU VM worker; print its path, last.
#   bash launch/worker_setup.sh --venv DIR [--provision auto|system|uv] [--wheelhouse DIR]
#       [--python_dist FILE] [--extras tpu] [--python_version 3.11]
# launch/remote_script.py's launch script runs it from the unpacked release. Everything it says
# goes to stderr as `podharness: ...`, and each step it finishes as `podharness-step: ...`
# (the launcher times them: launch/provision_progress.py); stdout gets only the
# interpreter's path.
#
# First it reports what the worker has (python3 and its version, venv/ensurepip, pip,
# uv), then it makes DIR a venv with Python >= --python_version and the release's
# requirements (launch/requirements.py), and reuses it while those stay the same.
#   system: a python3.N >= the version that has venv/ensurepip (or --python_dist, a
#           python-build-standalone "install_only" archive shipped from the launcher);
#   uv:     uv (found, unpacked from the wheelhouse's uv wheel, or `pip install --user uv`)
#           makes the venv; `uv python install` fetches a standalone CPython if the
#           worker has none new enough;
#   auto:   system when possible, else uv.
# With --wheelhouse every package comes from that directory (--no-index); nothing is
# downloaded. Without it: packages from PyPI, and in uv mode possibly uv's wheel from
# PyPI and CPython from github.com/astral-sh/python-build-standalone (about 30 MB).
# Exit 1 with one line saying what is missing when none of this is possible.
set -euo pipefail

provision=auto
wheelhouse=""
python_dist=""
extras=tpu
want=3.11
venv=""
while [ $# -gt 0 ]; do
  case "$1" in
    --provision) provision=$2; shift 2 ;;
    --wheelhouse) wheelhouse=$2; shift 2 ;;
    --python_dist) python_dist=$2; shift 2 ;;
    --extras) extras=$2; shift 2 ;;
    --python_version) want=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    *) echo "podharness: worker_setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$venv" ] || { echo "podharness: worker_setup.sh: --venv is required" >&2; exit 2; }
case "$provision" in auto|system|uv) ;; *) echo "podharness: --provision must be auto, system or uv" >&2; exit 2 ;; esac

say() { echo "podharness: $*" >&2; }
step_done() { echo "podharness-step: $*" >&2; }
die() { say "error: $*"; exit 1; }

py_version() { "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null; }
at_least() {  # VERSION WANTED: is major.minor of VERSION >= WANTED?
  local a b c d
  IFS=. read -r a b _ <<<"$1"
  IFS=. read -r c d <<<"$2"
  [ -n "$a" ] && [ -n "$b" ] && { [ "$a" -gt "$c" ] || { [ "$a" -eq "$c" ] && [ "$b" -ge "$d" ]; }; }
}
has_venv() { "$1" -c 'import ensurepip, venv' >/dev/null 2>&1; }
has_pip() { "$1" -m pip --version >/dev/null 2>&1; }
find_uv() {
  if command -v uv >/dev/null 2>&1; then command -v uv
  elif [ -x "$HOME/.local/bin/uv" ]; then echo "$HOME/.local/bin/uv"
  fi
}

report() {
  local py version verdict found
  py=$(command -v python3 || true)
  if [ -z "$py" ]; then
    say "worker python3: not found"
  else
    version=$(py_version "$py" || echo unknown)
    if at_least "$version" "$want"; then verdict=ok; else verdict="too old: the harness needs Python >= $want"; fi
    say "worker python3: $py ($version): $verdict"
    if has_venv "$py"; then say "worker python3 venv/ensurepip: available"
    else say "worker python3 venv/ensurepip: missing (Ubuntu package python3-venv)"; fi
    if has_pip "$py"; then say "worker python3 pip: available"
    else say "worker python3 pip: missing (Ubuntu package python3-pip)"; fi
  fi
  found=$(find_uv || true)
  say "worker uv: ${found:-not found}"
}

dist_python() {  # unpack --python_dist (python-build-standalone install_only) once; print its python
  local dir="$HOME/podharness/python-dist"
  rm -rf "$dir"
  mkdir -p "$dir"
  tar -xzf "$python_dist" -C "$dir" || die "cannot unpack --python_dist $python_dist"
  rm -f "$python_dist"
  [ -x "$dir/python/bin/python3" ] || die "--python_dist has no python/bin/python3 (use an install_only archive)"
  echo "$dir/python/bin/python3"
}

system_python() {  # the first interpreter >= $want that can make a venv
  local candidate path version
  for candidate in "${candidates[@]}"; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    version=$(py_version "$path") || continue
    if at_least "$version" "$want" && has_venv "$path"; then echo "$path"; return 0; fi
  done
  return 1
}

get_uv() {  # sets $uv
  uv=$(find_uv || true)
  [ -n "$uv" ] && return 0
  if [ -n "$wheelhouse" ]; then
    local wheel
    wheel=$(find "$wheelhouse" -maxdepth 1 -name "uv-*.whl" | head -n 1)
    [ -n "$wheel" ] || die "no uv on this worker and none in the wheelhouse; rebuild it with python -m launch.wheelhouse"
    say "unpacking uv from the wheelhouse ($(basename "$wheel"))"
    rm -rf "$HOME/podharness/uv"
    python3 -m zipfile -e "$wheel" "$HOME/podharness/uv" || die "cannot unpack $wheel (needs python3)"
    uv=$(find "$HOME/podharness/uv" -path "*.data/scripts/uv" | head -n 1)
    [ -n "$uv" ] || die "$wheel holds no uv binary"
    chmod +x "$uv"
    return 0
  fi
  has_pip python3 || die "no uv on this worker and no pip to install it: install python3-pip, or pass --wheelhouse (it carries uv)"
  say "installing uv: python3 -m pip install --user uv (downloads uv from PyPI)"
  python3 -m pip install --user -q uv >&2 || die "pip could not install uv (no internet? pass --wheelhouse)"
  uv=$HOME/.local/bin/uv
  [ -x "$uv" ] || die "pip installed uv, but $uv is missing"
}

uv_venv() {
  get_uv
  if [ -n "$python_dist" ]; then
    "$uv" venv -q --python "$(dist_python)" "$venv" >&2 || die "uv venv failed"
    return 0
  fi
  if ! "$uv" python find "$want" >/dev/null 2>&1; then
    [ -z "$wheelhouse" ] || die "no Python >= $want on this worker, and offline (--wheelhouse): pass --python_dist, a python-build-standalone install_only archive"
    say "installing Python $want with uv (downloads CPython from github.com/astral-sh/python-build-standalone)"
    "$uv" python install "$want" >&2 || die "uv python install $want failed (no internet? pass --python_dist)"
  fi
  "$uv" venv -q --python "$want" "$venv" >&2 || die "uv venv --python $want failed"
}

install_requirements() {
  local python=$1 requirements index=()
  requirements="$venv.requirements.txt"
  if [ -n "$wheelhouse" ] && [ -f "$wheelhouse/requirements.txt" ]; then
    cp "$wheelhouse/requirements.txt" "$requirements"
  else
    "$python" -m launch.requirements --extras "$extras" >"$requirements" || die "cannot read the release's setup.cfg"
  fi
  local stamp
  stamp="$("$python" --version 2>&1) $(sha256sum <"$requirements" | cut -d" " -f1) ${wheelhouse:+offline}"
  if [ -f "$venv/.podharness-stamp" ] && [ "$(cat "$venv/.podharness-stamp")" = "$stamp" ]; then
    say "reusing $venv: same Python and requirements as last time"
    step_done "requirements reused"
    return 0
  fi
  [ -z "$wheelhouse" ] || index=(--no-index --find-links "$wheelhouse")
  say "installing $(grep -c . "$requirements") requirements into $venv${wheelhouse:+ from the wheelhouse (offline)}"
  if has_pip "$python"; then
    "$python" -m pip install -q --disable-pip-version-check "${index[@]}" -r "$requirements" >&2 \
      || die "pip install failed${wheelhouse:+ (is the wheelhouse built for the Python and platform of this worker?)}"
  else
    get_uv
    "$uv" pip install -q --python "$python" "${index[@]}" -r "$requirements" >&2 \
      || die "uv pip install failed${wheelhouse:+ (is the wheelhouse built for the Python and platform of this worker?)}"
  fi
  echo "$stamp" >"$venv/.podharness-stamp"
  step_done "requirements installed"
}

report
candidates=(python3.13 python3.12 python3.11 python3)
uv=""
if [ -x "$venv/bin/python" ] && at_least "$(py_version "$venv/bin/python" || echo 0.0)" "$want"; then
  say "using the venv $venv (Python $(py_version "$venv/bin/python"))"
else
  rm -rf "$venv"
  if [ -n "$python_dist" ] && [ "$provision" != uv ]; then
    candidates=("$(dist_python)")
    python_dist=""
  fi
  chosen=""
  if [ "$provision" != uv ]; then chosen=$(system_python || true); fi
  if [ -n "$chosen" ]; then
    say "making the venv $venv with $chosen ($(py_version "$chosen"))"
    "$chosen" -m venv "$venv" >&2 || die "$chosen -m venv failed"
  elif [ "$provision" = system ]; then
    die "no Python >= $want with venv/ensurepip on this worker: install python$want and python$want-venv, pass --python_dist, or use --provision uv"
  else
    say "no Python >= $want with venv/ensurepip here: provisioning with uv"
    uv_venv
  fi
fi
step_done "venv ready (Python $(py_version "$venv/bin/python"))"
install_requirements "$venv/bin/python"
echo "$venv/bin/python"
