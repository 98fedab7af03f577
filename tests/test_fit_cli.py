"""`harness-fit` as users run it: bad input is one line and exit 2, a fit is exit 0 with
fit.json and a chart, running out of memory is exit 1 with the compiler's numbers and
never a traceback.

    .venv/bin/python -m pytest -q tests/test_fit_cli.py
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.fit import cli
from tests.support.fit_json import read_fit_json
from tests.support.runs import REPO_ROOT, failure_report, harness_env

SMALL = ["--model", "transformer", "--model_size", "tiny", "--image_size", "32", "--seq_len", "64"]
SECONDS = r"\(\d+\.\d s\)"


@pytest.mark.parametrize("argv, message", [
    (["--topology", "v7-8"], "unknown TPU product or topology 'v7-8'"),
    (["--topology", "v6e:32x32"], "unknown TPU product or topology 'v6e:32x32'"),
    ([], "no TPU target: pass --topology"),
    (["--config", "v4-8", "--chip_config", "megacore_plus"], "chip config 'megacore_plus' is not available on v4"),
    (["--config", "v4-8", "--batch_size", "30"], "--batch_size=30 is not divisible by the 4 devices of v4-8"),
    (["--config", "v5litepod-256", "--num_slices", "2", "--batch_size", "256"],
     "--batch_size=256 is not divisible by the 512 devices of v5litepod-256 x 2 slices"),
    (["--config", "v4-8", "--fsdp_devices", "3"], "--fsdp_devices=3 does not divide the 4 devices of a v4-8 slice"),
    (["--config", "v4-8", "--model", "transformer", "--model_size", "70b"], "unknown --model_size '70b'"),
    (["--config", "v4-8", "--model", "my_pkg.nowhere:make_model"],
     "--model my_pkg.nowhere:make_model: cannot import my_pkg.nowhere (ModuleNotFoundError"),
    (["--config", "v4-8", "--max_compiles", "-1"], "--max_compiles must be >= 0"),
    (["--config", "v4-8", "--compile_workers", "-1"], "--compile_workers must be >= 0"),
    (["--config", "v4-8", "--compile_timeout", "0"], "--compile_timeout must be positive, got 0"),
    (["--config", "v4-8", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--config", "nope"], "unknown preset 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code = cli.main(argv)

    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(f"harness-fit: error: {message}"), err
    assert err.count("\n") == 1


def test_missing_libtpu_is_one_line_and_exit_2(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))

    code = cli.main(["--config", "v4-8", *SMALL])

    _, err = capsys.readouterr()
    assert code == 2
    assert err == ("harness-fit: error: libtpu is not installed: harness-fit compiles for TPU with it "
                   "(pip install -e '.[tpu]', or `make fit`, which installs it)\n")


def _fit(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """harness-fit with its compile cache in `cache` (never the user's ~/.cache)."""
    return subprocess.run([sys.executable, "-m", "harness.fit", *args], cwd=REPO_ROOT,
                          env=harness_env(XDG_CACHE_HOME=str(cache)), capture_output=True, text=True, timeout=300)


def _compile_lines(stderr: str) -> tuple[dict[int, str], dict[int, str]]:
    """Progress lines by compile number: as each started, and as it ended."""
    starts, ends = {}, {}
    for line in stderr.splitlines():
        if match := re.fullmatch(r"harness-fit: compile (\d+)(?:/\d+| \(of at most \d+\)): (.*)", line):
            starts[int(match.group(1))] = match.group(2)
        elif match := re.fullmatch(r"harness-fit: compile (\d+): (.*)", line):
            ends[int(match.group(1))] = match.group(2)
    return starts, ends


def test_a_fit_exits_0_with_a_table_fit_json_and_a_chart(tmp_path):
    result = _fit("--config", "v5litepod-16", *SMALL, "--no_search", "--run_dir", str(tmp_path / "run"),
                  cache=tmp_path / "cache")

    assert result.returncode == 0, failure_report(result)
    assert "Traceback" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("harness-fit: compile ")]
    assert progress[0] == ("harness-fit: compile 1/1: batch 256 (16 per device) on v5litepod-16: transformer tiny, "
                           "float32 params, float32 compute, remat none, mesh data=4 fsdp=4")
    assert re.fullmatch(rf"harness-fit: compile 1: batch 256 on v5litepod-16 fits: peak \d+\.\d\d MiB of "
                        rf"15\.75 GiB HBM {SECONDS}", progress[1]), progress
    assert len(progress) == 2
    for line in ("Verdict: FITS", "peak (compiler)", "of 15.75 GiB HBM", "Collectives (compiled HLO)",
                 "limited by", "on v5litepod-16 (v5e:4x4, default; 16 chips, 4 host(s))"):
        assert line in result.stdout, line
    saved = read_fit_json(tmp_path / "run")
    assert saved["verdict"] == "FITS" and saved["target"]["devices"] == 16
    assert saved["mesh"] == {"data": 4, "fsdp": 4} and saved["collectives"]["all-gather"]["ops"] > 0
    assert saved["flops"]["source"] == "analytic" and saved["program_fingerprint"]
    assert (tmp_path / "run" / "fit_memory.png").read_bytes()[:4] == b"\x89PNG"


def test_remat_offload_reports_no_device_peak_and_shows_the_pinned_host_bytes(tmp_path):
    """libtpu's peak for an offloading program counts the host side too, so the report
    gives no device peak (the verdict is the compiler's) and shows the host's bytes."""
    result = _fit("--config", "v5litepod-16", *SMALL, "--remat", "offload", "--no_search",
                  "--run_dir", str(tmp_path / "run"), cache=tmp_path / "cache")

    assert result.returncode == 0, failure_report(result)
    saved = read_fit_json(tmp_path / "run")
    memory = saved["memory_per_device_bytes"]
    assert memory["pinned host temporaries"] == saved["compiler_memory_analysis"]["host_temp_size"] > 0
    assert memory["peak"] is None and saved["headroom_percent"] is None and saved["verdict"] == "FITS"
    assert re.search(r"peak \(compiler\) +not reported  of 15\.75 GiB HBM", result.stdout), result.stdout
    assert re.search(r"pinned host \(offloaded\) +\d+\.\d\d MiB  beside HBM; libtpu's peak counts it", result.stdout)
    assert "fits in 15.75 GiB HBM (no device peak: it offloads to host memory)" in result.stderr


def test_a_refusal_with_fsdp_over_part_of_the_slice_says_what_all_of_it_would_hold(tmp_path):
    """8b on v5litepod-16 with FSDP over 4 of its 16 chips: float32 weights and two Adam
    moments are 12 bytes a parameter, split 4 ways; over the slice they would be split 16."""
    result = _fit("--config", "v5litepod-16", *SMALL, "--model_size", "8b", "--fsdp_devices", "4",
                  "--batch_size", "16", "--no_search", "--run_dir", str(tmp_path / "run"), cache=tmp_path / "cache")

    assert result.returncode == 1, failure_report(result)
    saved = read_fit_json(tmp_path / "run")
    parameters = saved["model"]["parameters"]
    wider = saved["wider_fsdp"]
    assert wider["fsdp_devices"] == 16
    assert wider["state_bytes"] == pytest.approx(12 * parameters / 16, rel=1e-6)
    assert wider["now_bytes"] == pytest.approx(12 * parameters / 4, rel=1e-6)
    assert re.search(r"with FSDP over every chip of the slice \(--fsdp_devices 16\) the parameters and optimizer "
                     r"state would take 5\.63 GiB per device, not 22\.52 GiB; --search settings finds the fastest "
                     r"setting that fits", result.stdout), result.stdout


def test_out_of_memory_exits_1_with_the_compilers_numbers_and_asked_again_compiles_nothing(tmp_path):
    """8b on v4-8 does not fit at any batch: the search (beside the requested batch, in
    its own worker) goes far up, then down to one sample per chip, each refusal in
    seconds. Asked again, the disk cache answers every compile."""
    argv = ["--config", "v4-8", *SMALL, "--model_size", "8b", "--batch_size", "16", "--compile_workers", "2"]
    result = _fit(*argv, "--run_dir", str(tmp_path / "run"), cache=tmp_path / "cache")

    assert result.returncode == 1, failure_report(result)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    starts, ends = _compile_lines(result.stderr)
    settings = "transformer 8b, float32 params, float32 compute, remat none, mesh data=1 fsdp=4"
    batches = {1: 16, 2: 256, 3: 20, 4: 4}   # requested; 16x it; the line from 0 through 256; the minimum
    assert starts == {n: f"batch {b} ({b // 4} per device) on v4-8: {settings}" for n, b in batches.items()}
    assert set(ends) == set(batches)
    for number, batch in batches.items():
        assert re.fullmatch(rf"batch {batch} on v4-8 out of memory: needs \d+\.\d\d GiB of 30\.75 GiB HBM {SECONDS}",
                            ends[number]), ends
    assert "Verdict: DOES NOT FIT" in result.stdout
    assert "compiler: RESOURCE_EXHAUSTED: Ran out of memory on HBM" in result.stdout
    assert "exceeds available HBM (30.75G)" in result.stdout
    assert "Largest global batch: none fits (batch 4 does not compile into HBM)" in result.stdout
    assert "4 compile(s) (0 fit) in 2 process(es)" in result.stdout
    saved = read_fit_json(tmp_path / "run")
    assert saved["verdict"] == "DOES NOT FIT" and saved["headroom_percent"] < 0
    assert saved["out_of_memory"]["available_bytes"] == saved["memory_per_device_bytes"]["hbm"]
    assert [p["batch_size"] for p in saved["largest_batch"]["probes"]] == [16, 256, 20, 4]
    assert saved["compiles"]["compiled"] == 4 and saved["compiles"]["from_cache"] == 0

    again = _fit(*argv, "--run_dir", str(tmp_path / "again"), cache=tmp_path / "cache")

    assert again.returncode == 1, failure_report(again)
    starts, ends = _compile_lines(again.stderr)
    assert set(starts) == set(ends) == set(batches)
    assert all(end.endswith("(from the cache)") for end in ends.values()), ends
    repeated = read_fit_json(tmp_path / "again")
    assert repeated["compiles"]["compiled"] == 0 and repeated["compiles"]["from_cache"] == 4
    for key in ("verdict", "memory_per_device_bytes", "out_of_memory"):
        assert repeated[key] == saved[key], key
    assert repeated["largest_batch"]["probes"] == [dict(p, cached=True) for p in saved["largest_batch"]["probes"]]
