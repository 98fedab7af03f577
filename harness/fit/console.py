"""The report as a console table. Sizes are binary (GiB, MiB): the TPU compiler's "G"
is a GiB."""

from __future__ import annotations

from harness.fit.report import FitReport
from harness.fit.units import format_bytes, format_duration, format_si

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
    lines.append(f"  {label:<30}{format_bytes(report.used_bytes):>12}  of {format_bytes(report.memory.hbm)} HBM")
    return lines


def _verdict(report: FitReport) -> list[str]:
    headroom = report.headroom_percent
    lines = [f"Verdict: {report.verdict}" + ("" if headroom is None else f" ({headroom:+.1f}% headroom)")]
    if report.oom is not None:
        lines.append(f"  compiler: {report.oom.message}")
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
    lines = [f"FLOPs per step: {format_si(bound.flops_per_step, 'FLOP')} ({bound.flops_source}); "
             f"per device {format_si(bound.flops_per_device, 'FLOP')}"]
    compiler = (report.compiler_cost or {}).get("flops")
    if compiler is not None and bound.flops_source == "analytic":
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
            f"${cost.usd_per_1000_steps:,.2f} per 1,000 steps ({cost.chips} chips x "
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
