"""The report as a console table. Sizes are binary (GiB, MiB): the TPU compiler's "G"
is a GiB."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from harness.fit.economics import PRICES_AS_OF
from harness.fit.report import FitReport
from harness.fit.settings import FITS, NOT_COMPILED, OUT_OF_MEMORY
from harness.fit.units import format_duration, format_si, format_usd
from harness.runtime.memory import format_bytes

if TYPE_CHECKING:
    from harness.fit.compare import Comparison
    from harness.fit.settings import SettingsSearch

RULE = "=" * 80


def _header(report: FitReport) -> list[str]:
    t, m = report.target, report.model
    named = f" {m['size']}" if m.get("size") else ""
    mesh = " ".join(f"{k}={v}" for k, v in report.mesh.items())
    slices = f" x {t.num_slices} slices (DCN)" if t.num_slices > 1 else ""
    return [
        RULE,
        f"WILL IT FIT?  {m['name']}{named}: {m['parameters'] / 1e6:,.1f}M parameters, {m['param_dtype']} params, "
        f"{m['compute_dtype']} compute, remat {m['remat']}",
        f"  on {t.product} ({t.topology}, {t.chip_config}; {t.chips} chips, {t.hosts_per_slice} host(s)){slices}: "
        f"{t.num_devices} devices of {t.chip.name}",
        f"  mesh {mesh}; global batch {report.batch_size} ({report.batch_size // t.num_devices} per device)",
        RULE,
    ]


def _memory(report: FitReport) -> list[str]:
    lines = ["Memory per device"]
    for name, value in report.memory.kinds().items():
        lines.append(f"  {name:<30}{format_bytes(value):>12}")
    label = "peak (compiler)" if report.fits else "required (compiler)"
    used = "not reported" if report.used_bytes is None else format_bytes(report.used_bytes)
    lines.append(f"  {label:<30}{used:>12}  of {format_bytes(report.memory.hbm)} HBM")
    if report.memory.host_temporaries:
        lines.append(f"  {'pinned host (offloaded)':<30}{format_bytes(report.memory.host_temporaries):>12}  "
                     f"beside HBM; libtpu's peak counts it, so it gives no device peak")
    return lines


def _verdict(report: FitReport) -> list[str]:
    headroom = report.headroom_percent
    lines = [f"Verdict: {report.verdict}" + ("" if headroom is None else f" ({headroom:+.1f}% headroom)")]
    if report.oom is not None:
        lines.append(f"  compiler: {report.oom.message}")
    if (wider := report.wider_fsdp) is not None:
        lines.append(f"  with FSDP over every chip of the slice (--fsdp_devices {wider.fsdp_devices}) the parameters "
                     f"and optimizer state would take {format_bytes(wider.state_bytes)} per device, not "
                     f"{format_bytes(wider.now_bytes)}; --search settings finds the fastest setting that fits")
    search = report.search
    if search is not None:
        if search.largest is None:
            lines.append(f"Largest global batch: none fits (batch {search.smallest_failing} does not compile into HBM)")
        elif search.proven:
            lines.append(f"Largest global batch: {search.largest} (compiled; {search.smallest_failing} does not fit)")
        else:
            upper = f"< {search.smallest_failing}" if search.smallest_failing else "no upper bound found"
            lines.append(f"Largest global batch: >= {search.largest}, {upper} (search stopped after "
                         f"{len(search.probes) - 1} compiles: not proven)")
        tried = ", ".join(f"{p.batch_size}{'' if p.fits else ' (no)'}" for p in search.probes)
        lines.append(f"  batches compiled: {tried}")
    return lines


def _speed(report: FitReport) -> list[str]:
    bound = report.bound
    if bound is None:
        return []
    chip = report.target.chip
    analytic = bound.flops_source.startswith("analytic")
    recompute = " with remat's recompute" if bound.flops_source.endswith("remat recompute") else ""
    source = "analytic" if analytic else bound.flops_source
    lines = [f"FLOPs per step: {format_si(bound.flops_per_step, 'FLOP')} ({source}); "
             f"executed per device {format_si(bound.flops_per_device, 'FLOP')}{recompute}"]
    compiler = (report.compiler_cost or {}).get("flops")
    if compiler is not None and analytic:
        lines.append(f"  compiler's count per device: {format_si(compiler, 'FLOP')} (scan bodies counted once)")
    lines += [
        f"Step time >= {format_duration(bound.seconds)}, limited by {bound.limited_by}",
        f"  compute {format_duration(bound.compute_s)} at {format_si(chip.peak_bf16_flops, 'FLOP/s')}; "
        f"HBM {format_duration(bound.memory_s)} for {format_bytes(bound.hbm_bytes_per_device)} at "
        f"{format_si(chip.hbm_bytes_per_s, 'B/s')} ({chip.source})",
    ]
    return lines


def _cost(report: FitReport) -> list[str]:
    cost = report.cost
    if cost is None:
        return []
    return [f"  estimate at MFU {cost.mfu:.2f}: {format_duration(cost.estimate_s)} per step; "
            f"{format_usd(cost.usd_per_1000_steps)} per 1,000 steps ({cost.chips} chips x "
            f"${cost.price.usd_per_chip_hour:.2f}/chip-hour, {cost.price.region})"]


def _plan(report: FitReport) -> list[str]:
    plan = report.plan
    if plan is None:
        return []
    hosts = len(plan.bytes.per_host)
    lines = ["Checkpoint plan",
             f"  per save: {format_bytes(plan.bytes.total)} (params, optimizer state, step); "
             f"{format_bytes(plan.bytes.largest_host)} from the busiest of {hosts} host(s)"]
    if plan.save_s is None:
        return lines + ["  save time: no write throughput (pass --storage_mbps, or --preflight_json from "
                        "harness-preflight)"]
    steps = "" if plan.interval_steps is None else f" (~{plan.interval_steps:,} steps)"
    return lines + [
        f"  save time {format_duration(plan.save_s)} at {plan.throughput.write_mb_per_s:,.0f} MB/s per host "
        f"({plan.throughput.source})",
        f"  save every {format_duration(plan.interval_s)}{steps} for an MTBF of {format_duration(plan.mtbf_s)} "
        f"(Young): {100 * plan.lost_to_saves:.2f}% of the time lost to saves, {100 * plan.lost_to_rework:.2f}% "
        f"to rework",
    ]


def _collectives(report: FitReport) -> list[str]:
    if report.census is None:
        return []
    if not report.census:
        return ["Collectives (compiled HLO): none"]
    lines = ["Collectives (compiled HLO)   ops  in loops  runs/step  MiB/step"]
    for kind, count in report.census.items():
        runs = "?" if count.runs_per_step is None else str(count.runs_per_step)
        mib = "?" if count.bytes_per_step is None else f"{count.bytes_per_step / (1 << 20):.1f}"
        lines.append(f"  {kind:<25}{count.ops:>6}{count.in_loops:>10}{runs:>11}{mib:>10}")
    return lines


def _compiles(report: FitReport) -> str:
    count = report.compiles
    if count is None:
        return ""
    cached = f", {count.from_cache} from the cache" if count.from_cache else ""
    return (f"; {count.compiled} compile(s) ({count.compiled_fits} fit){cached} in "
            f"{count.workers} process(es)")


def render(report: FitReport, outputs: list[str]) -> str:
    lines = (_header(report) + _memory(report) + _verdict(report) + _speed(report) + _cost(report) + _plan(report)
             + _collectives(report))
    lines.append(f"Compile {report.compile_seconds:.1f} s; wall {report.wall_seconds:.1f} s{_compiles(report)}; "
                 f"wrote {', '.join(outputs)}")
    lines.append(RULE)
    return "\n".join(lines)


def render_comparison(comparison: Comparison, outputs: list[str]) -> str:
    """One row per target, cheapest first, and each one's checkpoint plan."""
    first = comparison.rows[0].report
    m, a = first.model, comparison.assumptions
    named = f" {m['size']}" if m.get("size") else ""
    price = (f"${a.price_per_chip_hour:.2f}/chip-hour (given)" if a.price_per_chip_hour is not None
             else f"list prices per chip-hour as of {PRICES_AS_OF} (harness/fit/economics.py)")
    lines = [RULE,
             f"WHICH POD?  {m['name']}{named}: {m['parameters'] / 1e6:,.1f}M parameters, {m['param_dtype']} params, "
             f"{m['compute_dtype']} compute; global batch {comparison.batch_size}",
             f"  cost of 1,000 steps at the estimate (MFU {a.mfu:.2f}) and {price}", RULE,
             f"{'':3}{'target':<14}{'chips':>5}{'hosts':>6}  {'verdict':<13}{'fsdp':>4} {'remat':<6}{'batch':>6}"
             f"  {'peak / HBM per chip':<24}{'step >=':>10}{'estimate':>10}{'$/1k steps':>12}{'largest':>9}"]
    for rank, row in enumerate(comparison.rows, start=1):
        r, t = row.report, row.report.target
        peak = f"{'-' if r.used_bytes is None else format_bytes(r.used_bytes)} / {format_bytes(r.memory.hbm)}"
        largest = "-" if r.search is None else (str(r.search.largest) if r.search.largest else "none") + (
            "" if r.search.proven else "?")
        cost = "-" if row.usd_per_1000_steps is None else format_usd(row.usd_per_1000_steps)
        lines.append(f"{rank:<3}{row.product:<14}{t.chips * t.num_slices:>5}{t.hosts_per_slice * t.num_slices:>6}  "
                     f"{r.verdict:<13}{row.settings['fsdp_devices']:>4} {row.settings['remat']:<6}{r.batch_size:>6}  "
                     f"{peak:<24}{format_duration(r.bound.seconds):>10}{format_duration(r.cost.estimate_s):>10}"
                     f"{cost:>12}{largest:>9}")
    lines.append("  (largest: the largest global batch that fits, compiled next to one that does not; ? unproven)")
    notes = [f"  {row.product}: {row.note}" for row in comparison.rows if row.note]
    lines += (["Settings changed per target:"] + notes) if notes else []
    lines.append("Checkpoint plan (per save; save time and interval at the write throughput, MTBF "
                 f"{format_duration(a.mtbf_hours * 3600)})")
    for row in comparison.rows:
        plan = row.report.plan
        text = (f"  {row.product:<14}{format_bytes(plan.bytes.total):>11} in all, {format_bytes(plan.bytes.largest_host)}"
                f" from the busiest of {len(plan.bytes.per_host)} host(s)")
        if plan.save_s is not None:
            steps = "" if plan.interval_steps is None else f" (~{plan.interval_steps:,} steps)"
            text += (f"; save {format_duration(plan.save_s)}, every {format_duration(plan.interval_s)}{steps}, "
                     f"{100 * (plan.lost_to_saves + plan.lost_to_rework):.2f}% of the time lost")
        lines.append(text)
    if a.throughput is None:
        lines.append("  save times: no write throughput (pass --storage_mbps, or --preflight_json from harness-preflight)")
    count = comparison.compiles
    cached = f", {count.from_cache} from the cache" if count.from_cache else ""
    lines += [f"Wall {comparison.wall_seconds:.1f} s; {count.compiled} compile(s) ({count.compiled_fits} fit){cached} "
              f"in {count.workers} process(es); wrote {', '.join(outputs)}", RULE]
    return "\n".join(lines)


def render_settings(found: SettingsSearch, outputs: list[str]) -> str:
    """The fastest setting as a harness-train command, the runners-up, the rejected."""
    lines = [RULE, f"FASTEST SETTING on {found.target.product}: by the step-time bound per sample, at each "
                   f"setting's largest batch", RULE]
    if found.report is None:
        lines.append(f"No setting fits global batch {found.requested_batch}: every FSDP size and remat policy runs "
                     f"out of memory at it (a smaller --batch_size may fit).")
    else:
        winner = found.results[0]
        lines += [f"Winner: fsdp {winner.fsdp}, remat {winner.remat}, global batch {winner.largest} "
                  f"({format_duration(winner.per_sample_s)} per sample; {winner.bound.limited_by})",
                  "  " + shlex.join(found.command)]
    lines.append(f"{'fsdp':>6} {'remat':<8}{'status':<15}{'largest batch':>14}{'step >=':>11}{'per sample':>12}"
                 f"  {'limited by':<12}{'compiles':>9}")
    for r in found.results:
        largest = "-" if r.largest is None else f"{r.largest}{'' if r.proven else '?'}"
        step = "-" if r.bound is None else format_duration(r.bound.seconds)
        per = "-" if r.per_sample_s is None else format_duration(r.per_sample_s)
        limit = "-" if r.bound is None else r.bound.limited_by.split(" ")[0]
        lines.append(f"{r.fsdp:>6} {r.remat:<8}{r.status:<15}{largest:>14}{step:>11}{per:>12}  {limit:<12}"
                     f"{r.compiles:>9}")
    if any(r.status == OUT_OF_MEMORY for r in found.results):
        lines.append(f"  (out of memory: refused at global batch {found.requested_batch}, the smallest asked for)")
    if any(r.status == NOT_COMPILED for r in found.results):
        lines.append("  (not compiled: a level with more recompute, which cannot beat a compute-bound winner)")
    if any(r.offloads and r.status == FITS for r in found.results):
        lines.append("  (offload: ranked after every setting without it; its activations' trips to host memory "
                     "and back are not in the bound)")
    if any(r.largest is not None and not r.proven for r in found.results):
        lines.append("  (?: the search stopped at --max_compiles before a refusal one step above proved it)")
    if found.report is not None:
        lines.append(render(found.report, outputs))
    else:
        lines += [f"wrote {', '.join(outputs)}", RULE]
    return "\n".join(lines)
