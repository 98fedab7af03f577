"""harness-fit's parts that need no compiler: the product table, the batch search, the
collective census, the step-time bound, and the report writers.

    .venv/bin/python -m pytest -q tests/test_fit_units.py
"""

from __future__ import annotations

import json

import pytest

from harness.errors import UsageError
from harness.fit.census import collective_census
from harness.fit.compile import ArgumentBytes, CompileOutcome, OutOfMemory
from harness.fit.report import FitReport, MemoryByKind, write_json
from harness.fit.roofline import step_time_bound
from harness.fit.search import BatchSearch, largest_batch, probe_of
from harness.fit.topology import CHIPS, products, resolve
from harness.fit.units import GIB

# Topology table.


@pytest.mark.parametrize("name, product, topology, chip_config, devices, hosts", [
    ("v4-8", "v4-8", "v4:2x2x1", "megacore", 4, 1),
    ("v4-32", "v4-32", "v4:2x2x4", "megacore", 16, 4),
    ("v4:2x2x4", "v4-32", "v4:2x2x4", "megacore", 16, 4),
    ("v5litepod-16", "v5litepod-16", "v5e:4x4", "default", 16, 4),
    ("v5e-16", "v5litepod-16", "v5e:4x4", "default", 16, 4),
    ("v5litepod-8", "v5litepod-8", "v5e:2x4", "default", 8, 1),
    ("v5litepod-256", "v5litepod-256", "v5e:16x16", "default", 256, 64),
    ("v6e-256", "v6e-256", "v6e:16x16", "default", 256, 64),
    ("v5p-8", "v5p-8", "v5p:2x2x1", "megacore", 4, 1),
])
def test_products_and_topologies_resolve_to_the_same_target(name, product, topology, chip_config, devices, hosts):
    target = resolve(name)

    assert (target.product, target.topology, target.chip_config) == (product, topology, chip_config)
    assert (target.num_devices, target.hosts_per_slice) == (devices, hosts)


def test_slices_and_per_core_devices_multiply_the_device_count():
    assert resolve("v5litepod-256", num_slices=2).num_devices == 512
    assert resolve("v4-8", "default").num_devices == 8
    assert resolve("v4-8", "default").chip.hbm_bytes == int(15.25 * GIB)


@pytest.mark.parametrize("name, message", [
    ("v6e:32x32", "unknown TPU product or topology 'v6e:32x32'"),   # libtpu would accept it
    ("v5litepod-12", "unknown TPU product or topology 'v5litepod-12'"),
    ("v7-8", "unknown TPU product or topology 'v7-8'"),
    ("", "no TPU target: pass --topology"),
])
def test_unknown_targets_are_usage_errors(name, message):
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        resolve(name)


def test_chip_configs_are_checked_against_the_family():
    with pytest.raises(UsageError, match="chip config 'megacore' is not available on v6e"):
        resolve("v6e-8", "megacore")


def test_every_product_names_its_chip_count():
    for name, (family, shape) in products().items():
        target = resolve(name)
        per_chip = 2 if family in ("v4", "v5p") else 1
        assert int(name.split("-")[1]) == target.chips * per_chip, name
        assert target.chip in CHIPS.values()


# Largest-batch search against fake compilers: a straight line, and the TPU compiler's
# own figures for the 1B transformer on v5litepod-16 (bfloat16 compute, full remat,
# FSDP 16: `make fit`), recorded by compiling the step at each batch
# (harness.fit.compile.compile_train_step; jax 0.10.2, libtpu 0.0.42.1). Refusals took
# 2-3 s on the 2-core machine, fits 90-250 s: the search should pay for one fit.

RECORDED_HBM = 16911433728  # 15.75 GiB
RECORDED_BASE = 763430912   # the compiler's argument bytes at batch 256 (parameters, Adam, batch)
RECORDED_REQUIRED = {2048: 18049600061, 2064: 19198503813, 2080: 19338090250, 2112: 19617263124,
                     2176: 20164871454, 2304: 21270825533, 2560: 23676007219, 3072: 26188563087,
                     4096: 32341103738, 8192: 64274185584}
RECORDED_PEAK = {224: 2795730944, 240: 2922113024, 256: 3048495104, 2032: 16233897984}


def _recorded_compiler(calls: list[int]):
    """Fits up to 2032 (peaks between the recorded ones on their line); refusals with the
    recorded requirement (between recorded sizes, on the line between them)."""
    def compile_at(batch: int) -> CompileOutcome:
        calls.append(batch)
        if batch <= 2032:
            peak = RECORDED_PEAK.get(batch, int(RECORDED_PEAK[256] + (batch - 256) * (16233897984 - 3048495104) / 1776))
            return CompileOutcome(batch, 90.0, memory={"peak_memory": peak})
        sizes = sorted(RECORDED_REQUIRED)
        below = max(b for b in sizes if b <= batch) if batch >= sizes[0] else sizes[0]
        above = min((b for b in sizes if b >= batch), default=sizes[-1])
        span = max(above - below, 1)
        required = RECORDED_REQUIRED[below] + (RECORDED_REQUIRED[above] - RECORDED_REQUIRED[below]) * (batch - below) / span
        return CompileOutcome(batch, 2.5, oom=OutOfMemory("RESOURCE_EXHAUSTED", int(required), RECORDED_HBM))
    return compile_at


def _linear_compiler(base: int, per_sample: int, hbm: int, calls: list[int]):
    def compile_at(batch: int) -> CompileOutcome:
        calls.append(batch)
        used = base + per_sample * batch
        if used <= hbm:
            return CompileOutcome(batch, 0.0, memory={"peak_memory": used})
        return CompileOutcome(batch, 0.0, oom=OutOfMemory("RESOURCE_EXHAUSTED", used, hbm))
    return compile_at


def test_search_on_the_recorded_compiler_pays_for_one_fit_the_answer():
    calls: list[int] = []
    compile_at = _recorded_compiler(calls)

    result = largest_batch(compile_at, compile_at(256), step=16, hbm_bytes=RECORDED_HBM, max_compiles=8,
                           base_bytes=RECORDED_BASE)

    assert (result.largest, result.smallest_failing, result.proven) == (2032, 2048, True)
    fits_probed = [b for b in calls[1:] if b <= 2032]
    assert fits_probed == [2032], calls
    assert len(calls) - 1 <= 6, calls  # 5 refusals of 2-3 s and the answer


def test_search_asks_the_same_compiles_in_whatever_order_they_finish():
    """The requested batch compiles beside the search; its outcome may arrive first,
    in the middle of the walk, or never: the search asks for the same batches."""
    sequences = []
    for arrives_after in (0, 2, None):
        calls: list[int] = []
        compile_at = _recorded_compiler(calls)
        search = BatchSearch(step=16, hbm_bytes=RECORDED_HBM, max_compiles=8, start=4096, requested=256,
                             base_bytes=RECORDED_BASE)
        asked = []
        while (batch := search.next_batch()) is not None:
            if len(asked) == arrives_after:
                search.record(probe_of(compile_at(256)))
            asked.append(batch)
            search.record(probe_of(compile_at(batch)))
        result = search.result()
        assert (result.largest, result.smallest_failing, result.proven) == (2032, 2048, True)
        sequences.append(asked)
    assert sequences[0] == sequences[1] == sequences[2]
    assert sequences[0][0] == 16 * 256 and [b for b in sequences[0] if b <= 2032] == [2032], sequences[0]


def test_search_waits_for_the_requested_batch_rather_than_compile_it_twice():
    search = BatchSearch(step=8, hbm_bytes=10_000, max_compiles=10, start=256, requested=16, base_bytes=9_000)
    compile_at = _linear_compiler(base=9_000, per_sample=50, hbm=10_000, calls=[])  # 16 fits, 24 does not

    while (batch := search.next_batch()) is not None:
        search.record(probe_of(compile_at(batch)))
    assert [p.batch_size for p in search.probes] == [256, 24] and search.pending == 16  # wants 16: waits

    search.record(probe_of(compile_at(16)))
    assert search.next_batch() is None and search.done
    result = search.result()
    assert (result.largest, result.smallest_failing, result.proven) == (16, 24, True)
    assert [p.batch_size for p in result.probes] == [256, 24, 16] and search.spent == 2


@pytest.mark.parametrize("start", [8, 64, 4096])
def test_search_proves_the_largest_batch_with_its_neighbour_on_a_line(start):
    calls: list[int] = []
    compile_at = _linear_compiler(base=1000, per_sample=7, hbm=10_000, calls=calls)

    result = largest_batch(compile_at, compile_at(start), step=8, hbm_bytes=10_000, max_compiles=10, base_bytes=1000)

    assert (result.largest, result.smallest_failing, result.proven) == (1280, 1288, True)  # 1000 + 7 * 1280 <= 10000
    assert {1280, 1288} <= {p.batch_size for p in result.probes}
    fits_probed = [b for b in calls[1:] if 1000 + 7 * b <= 10_000]
    assert len(fits_probed) <= 2 and len(calls) <= 8, calls


def test_search_reports_that_nothing_fits():
    compile_at = _linear_compiler(base=20_000, per_sample=7, hbm=10_000, calls=[])

    result = largest_batch(compile_at, compile_at(64), step=8, hbm_bytes=10_000, max_compiles=10)

    assert (result.largest, result.smallest_failing, result.proven) == (None, 8, True)


def test_there_is_no_device_peak_where_remat_offload_keeps_temporaries_on_the_host():
    """Measured with 1B, offload, FSDP 8, batch 1776 on v5e-16 (in GiB): libtpu's peak
    37.131 is the arguments' 1.447 plus the host temporaries' 35.684."""
    gib = 1 << 30
    measured = {"argument_size": int(1.447 * gib), "output_size": int(1.412 * gib), "alias_size": int(1.412 * gib),
                "temp_size": int(14.025 * gib), "generated_code_size": int(0.043 * gib),
                "peak_memory": int(37.131 * gib), "host_temp_size": int(35.684 * gib)}
    offload = CompileOutcome(1776, 1.0, memory=measured)
    assert offload.fits and offload.device_peak is None
    on_device = CompileOutcome(256, 1.0, memory={**measured, "host_temp_size": 0, "peak_memory": 3_048_495_104})
    assert on_device.device_peak == 3_048_495_104
    assert probe_of(offload).bytes == offload.device_peak


@pytest.mark.parametrize("floor, answer", [(800, (1280, 1288)), (2000, (None, 2000))])
def test_search_never_probes_below_its_floor_and_stops_when_the_floor_is_refused(floor, answer):
    """1000 + 7 b <= 10000 up to b = 1280: a floor below that changes nothing but the
    probes; a floor above it is refused, and that refusal ends the search unanswered."""
    calls: list[int] = []
    compile_at = _linear_compiler(base=1000, per_sample=7, hbm=10_000, calls=calls)
    search = BatchSearch(step=8, hbm_bytes=10_000, max_compiles=10, start=4096, base_bytes=1000, floor=floor)

    while (batch := search.next_batch()) is not None:
        search.record(probe_of(compile_at(batch)))

    result = search.result()
    assert (result.largest, result.smallest_failing, result.proven) == (*answer, True)
    assert min(calls) >= floor, calls


def test_search_stops_unproven_at_its_compile_budget():
    compile_at = _linear_compiler(base=1000, per_sample=7, hbm=10_000, calls=[])

    result = largest_batch(compile_at, compile_at(8), step=8, hbm_bytes=10_000, max_compiles=1)

    assert not result.proven and len(result.probes) == 2


# Collective census on a hand-written HLO module: a scan-like loop of 5 trips.

HLO = """HloModule step, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %one = s32[] constant(1)
  %i2 = s32[] add(%i, %one)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ag = (f32[2]{0}, f32[8]{0}) all-gather-start(%x), replica_groups={{0,1,2,3}}, dimensions={0}
  %agd = f32[8]{0} all-gather-done(%ag)
  %ar = f32[8]{0:T(128)} all-reduce(%agd), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %t = (s32[], f32[8]{0}) tuple(%i2, %ar)
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %zero = s32[] constant(0)
  %start = s32[]{:T(128)} copy(%zero)
  %init = (s32[], f32[8]{0}) tuple(%start, %x)
  %loop = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body
  %y = f32[8]{0} get-tuple-element(%loop), index=1
  %cp = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%y), source_target_pairs={{0,1},{1,0}}
  ROOT %cpd = f32[8]{0} collective-permute-done(%cp)
}
"""


def test_census_counts_ops_by_kind_and_multiplies_loop_bodies_by_their_trips():
    census = collective_census(HLO)

    assert set(census) == {"all-gather", "all-reduce", "collective-permute"}
    gather, reduce, permute = census["all-gather"], census["all-reduce"], census["collective-permute"]
    assert (gather.ops, gather.in_loops, gather.runs_per_step, gather.bytes_per_step) == (1, 1, 5, 5 * 32)
    assert (reduce.ops, reduce.in_loops, reduce.runs_per_step, reduce.bytes_per_step) == (1, 1, 5, 5 * 32)
    assert (permute.ops, permute.in_loops, permute.runs_per_step, permute.bytes_per_step) == (1, 0, 1, 32)


@pytest.mark.parametrize("unreadable", [("constant(5)", "parameter(1)"),   # limit not a constant
                                        ("constant(1)", "parameter(2)"),   # step not a constant
                                        ("copy(%zero)", "negate(%zero)")])  # start not a constant
def test_census_does_not_guess_an_unreadable_trip_count(unreadable):
    census = collective_census(HLO.replace(*unreadable))

    assert census["all-gather"].runs_per_step is None and census["all-gather"].ops == 1
    assert census["collective-permute"].runs_per_step == 1


# Step-time bound.

def test_step_time_bound_names_the_limit():
    chip = CHIPS[("v5e", "default")]
    arguments = ArgumentBytes(params=1 * GIB, optimizer=2 * GIB, batch=0, other=0)

    compute = step_time_bound(analytic_flops=197e12 * 16, compiler_flops_per_device=None, num_devices=16,
                              arguments=arguments, chip=chip)
    memory = step_time_bound(analytic_flops=1e9, compiler_flops_per_device=None, num_devices=16,
                             arguments=arguments, chip=chip)

    assert compute.compute_s == pytest.approx(1.0) and compute.limited_by.startswith("compute")
    assert memory.memory_s == pytest.approx(6 * GIB / 819e9) and memory.limited_by == "HBM bandwidth"
    fallback = step_time_bound(analytic_flops=None, compiler_flops_per_device=5e12, num_devices=16,
                               arguments=arguments, chip=chip)
    assert fallback.flops_per_device == 5e12 and fallback.flops_source.startswith("compiler")


# Writers.

def _report(fits: bool) -> FitReport:
    arguments = ArgumentBytes(params=GIB, optimizer=2 * GIB, batch=GIB // 8, other=12)
    memory = MemoryByKind(arguments=arguments, compiler_arguments=arguments.total + 4096 if fits else None,
                          temporaries=5 * GIB if fits else None, outputs_not_aliased=0 if fits else None,
                          generated_code=1 << 20 if fits else None, peak=7 * GIB if fits else None,
                          hbm=int(15.75 * GIB))
    oom = None if fits else OutOfMemory("RESOURCE_EXHAUSTED: ... (20.00G) exceeds available HBM (15.75G).",
                                        20 * GIB, int(15.75 * GIB))
    return FitReport(target=resolve("v5litepod-16"), model={"name": "transformer", "size": "1b", "parameters": 1e9,
                                                            "param_dtype": "float32", "compute_dtype": "bfloat16",
                                                            "remat": "full", "analytic_flops": True},
                     mesh={"data": 1, "fsdp": 16}, batch_size=256, fits=fits, memory=memory, oom=oom,
                     compile_seconds=1.0, program_fingerprint=None, census={}, bound=None, compiler_cost=None, search=None)


@pytest.mark.parametrize("fits, verdict, headroom", [(True, "FITS", 100 * (15.75 - 7) / 15.75),
                                                     (False, "DOES NOT FIT", 100 * (15.75 - 20) / 15.75)])
def test_fit_json_holds_the_verdict_and_memory_by_kind(tmp_path, fits, verdict, headroom):
    write_json(_report(fits), tmp_path / "fit.json")

    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["verdict"] == verdict and saved["headroom_percent"] == pytest.approx(headroom)
    assert saved["memory_per_device_bytes"]["parameters"] == GIB
    assert saved["memory_per_device_bytes"]["hbm"] == int(15.75 * GIB)
    assert (saved["out_of_memory"] is None) == fits


@pytest.mark.parametrize("fits", [True, False])
def test_console_renders_both_verdicts(fits):
    """(The chart's pictures are read in tests/test_fit_chart.py.)"""
    from harness.fit.console import render

    text = render(_report(fits), ["fit.json"])

    assert ("Verdict: FITS" if fits else "Verdict: DOES NOT FIT") in text
    assert ("peak (compiler)" if fits else "required (compiler)") in text
