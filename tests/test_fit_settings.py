"""`harness-fit --search settings` against brute force: the search (a level of remat at a
time, each setting's largest batch by harness/fit/search.py, pruned once the best is
compute-bound) must name the same winner as trying every FSDP size, remat policy and
batch. Here the compiler is a memory model (compiles take no time), on the real
v5litepod-4 topology and the real 1b transformer's shapes and FLOPs; the same check
with real compiles is the soak test at the end of this file. The winner's harness-train
command parses back into the same settings.

    .venv/bin/python -m pytest -q tests/test_fit_settings.py
"""

from __future__ import annotations

import heapq
import shlex
import subprocess
import sys

import jax
import pytest

from harness.config import load_preset
from harness.fit.compile import CompileOutcome, OutOfMemory
from harness.fit.console import render_settings
from harness.fit.economics import Assumptions
from harness.fit.runner import prepare, step_bound
from harness.fit.settings import FITS, NOT_COMPILED, OUT_OF_MEMORY, divisors, remat_levels, search_settings
from harness.fit.topology import resolve
from harness.fit.units import GIB
from tests.support.fit_json import read_fit_json
from tests.support.runs import REPO_ROOT, failure_report, harness_env

HBM = int(15.75 * GIB)
# Bytes one sample's activations take per device, by remat policy (offload keeps the
# least on the device; full keeps only the residual stream).
ACTIVATIONS = {"none": 900 << 20, "dots": 600 << 20, "offload": 350 << 20, "full": 150 << 20}
BRUTE_FORCE_BATCHES = range(4, 4 * 128 + 1, 4)  # every global batch up to 128 per device, on 4 devices
STATE = 12 * 1_010_000_000  # ~12 B per parameter of the 1b model: params and Adam's moments


def peak(fsdp: int, remat: str, batch: int, devices: int) -> int:
    return STATE // fsdp + (batch // devices) * ACTIVATIONS[remat] + (256 << 20)


class ModelCompiler:
    """The pool's interface (submit, next_finished) over `peak`: outcomes at once, in order."""

    parallel = False
    workers = 1
    peak_rss_mb: dict = {}

    def __init__(self, devices: int):
        self.devices, self.asked, self._queue, self._next = devices, [], [], 0

    def submit(self, config, *, census=False, priority=0, note=None) -> int:
        self._next += 1
        heapq.heappush(self._queue, (priority, self._next, config))
        return self._next

    def next_finished(self):
        _, job, config = heapq.heappop(self._queue)
        batch, fsdp, remat = config.data.batch_size, config.mesh.fsdp_devices, config.model.remat
        self.asked.append((fsdp, remat, batch))
        used = peak(fsdp, remat, batch, self.devices)
        if used > HBM:
            return job, CompileOutcome(batch, 0.0, oom=OutOfMemory("RESOURCE_EXHAUSTED", used, HBM))
        memory = {"argument_size": STATE // fsdp, "output_size": STATE // fsdp, "alias_size": STATE // fsdp,
                  "temp_size": used - STATE // fsdp, "generated_code_size": 0, "peak_memory": used}
        return job, CompileOutcome(batch, 0.0, memory=memory, cost={"flops": 1.0}, census={})


@pytest.fixture(scope="module")
def config():
    jax.config.update("jax_platforms", "cpu")
    return load_preset("v5litepod-16").replace(topology="v5litepod-4", chip_config="", model="transformer",
                                               model_size="1b", compute_dtype="bfloat16", batch_size=16)


def brute_force(config) -> dict[tuple[int, str], tuple[int, float, float] | None]:
    """Every setting at every batch up to 128 per device: its largest batch that fits, with
    the bound per sample and the HBM part per sample there (None: it does not fit the
    requested batch)."""
    target = resolve("v5litepod-4")
    found = {}
    for remat in [p for level in remat_levels(target) for p in level]:
        for fsdp in divisors(target.devices_per_slice):
            fits = [b for b in BRUTE_FORCE_BATCHES if peak(fsdp, remat, b, 4) <= HBM]
            if not fits or max(fits) < config.data.batch_size:
                found[(fsdp, remat)] = None
                continue
            bound = step_bound(prepare(config.replace(fsdp_devices=fsdp, remat=remat)), max(fits), 1.0)
            found[(fsdp, remat)] = (max(fits), bound.seconds / max(fits), bound.memory_s / max(fits))
    return found


@pytest.mark.parametrize("requested", [16, 64, 96])
def test_the_settings_search_names_the_brute_force_winner_with_fewer_compiles(config, requested):
    """At 64, several settings (FSDP 1 without full remat) fit only a smaller batch: they
    count as out of memory, and the winner is the fastest of those that take 64. At 96
    no setting without remat offload or full fits: offload fits the larger batch, but
    full, which keeps everything on the device, wins, so full's level is compiled."""
    config = config.replace(batch_size=requested)
    compiler = ModelCompiler(devices=4)

    found = search_settings(config, compiler, max_compiles=16, assumptions=Assumptions(), preset="v5litepod-16")

    every = brute_force(config)
    # Offload last (its host traffic is not in the bound), then the bound per sample.
    best = min((remat == "offload", v[1], v[2], -v[0], -fsdp, remat) for (fsdp, remat), v in every.items()
               if v is not None)
    winner = found.results[0]
    assert (winner.status, winner.remat, winner.fsdp, winner.largest) == (FITS, best[5], -best[4], -best[3])
    assert winner.proven and winner.per_sample_s == pytest.approx(best[1])
    assert found.report.batch_size == winner.largest and found.report.fits
    for result in found.results:
        expected = every[(result.fsdp, result.remat)]
        if result.status == NOT_COMPILED:   # only levels with more recompute than a compute-bound winner
            assert result.remat != winner.remat and winner.bound.limited_by.startswith("compute")
            assert not winner.offloads
            assert expected is None or expected[1] >= winner.per_sample_s
        elif expected is None:
            assert result.status == OUT_OF_MEMORY
        else:
            assert (result.status, result.largest, result.proven) == (FITS, expected[0], True)
        if result.status != NOT_COMPILED:
            assert all(batch >= requested for fsdp, remat, batch in compiler.asked
                       if (fsdp, remat) == (result.fsdp, result.remat))
    assert (sum(v is None for v in every.values()) > 0) == (requested >= 64)
    if requested == 96:
        fitting = {(r.remat, r.fsdp) for r in found.results if r.status == FITS}
        assert {remat for remat, _ in fitting} == {"offload", "full"} and winner.remat == "full"
        assert max(r.largest for r in found.results if r.offloads and r.status == FITS) > winner.largest
        text = render_settings(found, [])
        assert f"Winner: fsdp {winner.fsdp}, remat full, global batch {winner.largest} " in text
        assert ("  (offload: ranked after every setting without it; its activations' trips to host memory and "
                "back are not in the bound)") in text.splitlines()
    assert len(compiler.asked) < len(every) * len(BRUTE_FORCE_BATCHES)


def test_the_winners_command_parses_back_into_its_settings(config):
    from harness.config.flags import config_from_args
    from harness.train.cli import build_parser

    found = search_settings(config, ModelCompiler(devices=4), max_compiles=16, assumptions=Assumptions(),
                            preset="v5litepod-16")

    assert found.command[:3] == ["harness-train", "--config", "v5litepod-16"]
    parsed = config_from_args(vars(build_parser().parse_args(found.command[1:])))
    winner = found.results[0]
    assert (parsed.mesh.fsdp_devices, parsed.model.remat, parsed.data.batch_size) == (
        winner.fsdp, winner.remat, winner.largest)
    assert (parsed.model.name, parsed.model.size, parsed.model.compute_dtype) == ("transformer", "1b", "bfloat16")
    assert shlex.split(shlex.join(found.command)) == found.command


@pytest.mark.soak
def test_the_settings_search_matches_brute_force_with_real_compiles(tmp_path):
    """The tiny transformer with 512x512 images on one v5e chip (a few dozen samples fit):
    every remat policy's largest batch compiled (no pruning) against the search's winner,
    whose batch is proven by compiling it and the next size up. About 40 compiles."""
    from harness.fit.compile import compile_train_step
    from harness.fit.libtpu import topology_devices
    from harness.fit.pool import CompilePool
    from harness.runtime.mesh import make_mesh

    jax.config.update("jax_platforms", "cpu")
    config = load_preset("v5litepod-16").replace(topology="v5litepod-1", chip_config="", fsdp_devices=1,
                                                 model="transformer", model_size="tiny", image_size=512, seq_len=64,
                                                 batch_size=4)
    with CompilePool(2, str(tmp_path / "cache"), timeout_s=1800) as pool:
        found = search_settings(config, pool, max_compiles=16, assumptions=Assumptions(), preset=None)
        every = search_settings(config, pool, max_compiles=16, assumptions=Assumptions(), preset=None, prune=False)

    assert all(r.status != NOT_COMPILED for r in every.results)
    assert (found.results[0].fsdp, found.results[0].remat, found.results[0].largest) == (
        every.results[0].fsdp, every.results[0].remat, every.results[0].largest)
    winner = found.results[0]
    mesh = make_mesh(1, topology_devices(resolve("v5litepod-1")))
    chosen = config.replace(remat=winner.remat)
    assert compile_train_step(chosen.replace(batch_size=winner.largest), mesh).fits
    assert not compile_train_step(chosen.replace(batch_size=winner.largest + 1), mesh).fits


def test_the_cli_exits_1_with_every_setting_out_of_memory_when_none_fits(tmp_path):
    """8b on one v5e chip: every remat policy is refused far up and at one sample, each
    refusal in about a second, so the whole search runs here; fit.json is a settings record."""
    result = subprocess.run(
        [sys.executable, "-m", "harness.fit", "--config", "v5litepod-16", "--topology", "v5litepod-1", "--chip_config",
         "", "--fsdp_devices", "1", "--batch_size", "4", "--model", "transformer", "--model_size", "8b",
         "--image_size", "32", "--seq_len", "64", "--search", "settings", "--run_dir", str(tmp_path / "run")],
        cwd=REPO_ROOT, env=harness_env(XDG_CACHE_HOME=str(tmp_path / "cache")), capture_output=True, text=True,
        timeout=600)

    assert result.returncode == 1, failure_report(result)
    assert ("No setting fits global batch 4: every FSDP size and remat policy runs out of memory at it (a smaller "
            "--batch_size may fit).") in result.stdout
    assert "(out of memory: refused at global batch 4, the smallest asked for)" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("     1 ")]
    assert sorted(row[1] for row in rows) == ["dots", "full", "none", "offload"]
    assert all(row[2:5] == ["out", "of", "memory"] for row in rows)
    assert "(not compiled" not in result.stdout and "(?:" not in result.stdout
    saved = read_fit_json(tmp_path / "run")
    assert saved["mode"] == "settings" and saved["target"] == "v5litepod-1" and saved["requested_batch"] == 4
    assert saved["winner"] is None and saved["command"] is None and saved["report"] is None
    assert {s["remat"]: s["status"] for s in saved["settings"]} == dict.fromkeys(
        ["none", "dots", "offload", "full"], OUT_OF_MEMORY)
    assert all(s["largest_batch"] is None and s["compiles"] >= 2 for s in saved["settings"])
