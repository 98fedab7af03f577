"""How a preflight reads: the console table, `preflight.json` (schema.py) and
`preflight.md`, all from one judged `Report` (judge.py). Process 0 writes them."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from harness.preflight.consistency import pod_values
from harness.preflight.interconnect import published_ici
from harness.preflight.judge import Report
from harness.preflight.results import FAIL, ROWS, THROUGHPUT, worst
from harness.preflight.schema import SCHEMA_ID

CELL_WIDTH = 38
HOSTS_PER_BLOCK = 4
JSON_NAME, PAGE_NAME = "preflight.json", "preflight.md"


def host_label(report: Report, host: int) -> str:
    name = report.hostnames.get(host) or report.context.host_names.get(host)
    return f"host {host} ({name})" if name else f"host {host}"


def device_kind(report: Report) -> str | None:
    kinds = sorted({facts.get("device kind", "") for facts in report.facts.values()} - {""})
    return kinds[0] if len(kinds) == 1 else None


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _pod_throughput(report: Report) -> str:
    pod = report.throughput
    return (f"{pod.hosts} host(s) at once: write {pod.write_mb_per_s:.1f} MB/s, read {pod.read_mb_per_s:.1f} MB/s "
            f"({pod.bytes / 1e6:.1f} MB in all)")


def console_lines(report: Report) -> list[str]:
    """The check x host table (hosts in blocks of four columns), then the verdict."""
    ctx = report.context
    kind = device_kind(report)
    ici = published_ici(kind) if kind else None
    lines = [f"PREFLIGHT {report.verdict}  run {ctx.run_id} · {ctx.num_processes} host(s)"
             + (f" · {kind}" if kind else "") + (f" (ICI {ici:g} GB/s per chip, published)" if ici else "")
             + (f" · preset {ctx.preset}" if ctx.preset else "")]
    if ctx.fault.kind:
        lines.append(f"TESTING FAULT INJECTED: {ctx.fault.describe()}")
    first = max(len(row) for row in ROWS) + 2
    for start in range(0, len(report.hosts), HOSTS_PER_BLOCK):
        block = report.hosts[start:start + HOSTS_PER_BLOCK]
        lines.append("")
        lines.append("check".ljust(first) + "".join(_fit(host_label(report, h), CELL_WIDTH).ljust(CELL_WIDTH + 2)
                                                    for h in block).rstrip())
        for row in ROWS:
            cells = [report.cells[row][h] for h in block]
            lines.append(row.ljust(first) + "".join(_fit(f"{c.status} {c.value}", CELL_WIDTH).ljust(CELL_WIDTH + 2)
                                                    for c in cells).rstrip())
    if report.throughput:
        lines.append("")
        lines.append(f"storage throughput, {_pod_throughput(report)}")
    if report.aborted:
        lines.append(f"stopped early in {report.aborted.row}: {report.aborted.reason}")
    lines.append("")
    lines.append(f"harness-preflight: {report.summary()}")
    return lines


def to_json(report: Report) -> dict:
    ctx = report.context
    facts = {str(h): dict(f) for h, f in report.facts.items()}
    kind = device_kind(report)
    platforms = sorted({f.get("platform", "") for f in report.facts.values()} - {""})
    return {
        "schema": SCHEMA_ID,
        "verdict": report.verdict,
        "exit_code": report.exit_code,
        "summary": report.summary(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": ctx.run_id,
        "config": {"preset": ctx.preset, "hash": pod_values(report.facts).get("config") if report.facts else None},
        "pod": {"num_processes": ctx.num_processes, "coordinator_address": ctx.coordinator_address,
                "mesh": dict(ctx.mesh), "platform": platforms[0] if len(platforms) == 1 else None,
                "device_kind": kind},
        "testing_fault": {"kind": ctx.fault.kind, "host": ctx.fault.host} if ctx.fault.kind else None,
        "aborted": ({"check": report.aborted.row, "reason": report.aborted.reason, "hosts": list(report.aborted.hosts)}
                    if report.aborted else None),
        "hosts": [{"host": h, "hostname": report.hostnames.get(h) or ctx.host_names.get(h), "pid": report.pids.get(h)}
                  for h in report.hosts],
        "checks": [{"check": row, "status": worst([c.status for c in report.cells[row].values()]),
                    "cells": [{"host": h, "status": c.status, "value": c.value, "detail": c.detail,
                               "seconds": c.seconds, "metrics": dict(c.metrics)}
                              for h, c in sorted(report.cells[row].items())]}
                   for row in ROWS],
        "failures": [{"check": row, "host": h, "value": c.value, "detail": c.detail} for row, h, c in report.failures()],
        "consistency": {"pod": pod_values(report.facts) if report.facts else {}, "hosts": facts},
        "slow_host_factor": ctx.slow_host_factor,
        "storage_throughput": dataclasses.asdict(report.throughput) if report.throughput else None,
        "interconnect": {
            "straggler_factor": ctx.straggler_factor,
            "published_ici_gbytes_per_s": published_ici(kind) if kind else None,
            "measurements": [{"collective": m.collective, "axis": m.axis, "axis_size": m.axis_size, "bytes": m.nbytes,
                              "time_s": m.time_s, "algbw_gbytes_per_s": m.algbw_gbytes_per_s,
                              "busbw_gbytes_per_s": m.busbw_gbytes_per_s,
                              "latency_s": {str(h): v for h, v in sorted(m.latency_s.items())}}
                             for m in report.measurements],
        },
    }


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: Report) -> str:
    """The page a person reads: verdict, failures first, the table, then the evidence."""
    ctx = report.context
    kind = device_kind(report)
    out = [f"# Preflight: {report.verdict}", "", f"`harness-preflight: {_md_escape(report.summary())}`", "",
           f"Run `{ctx.run_id}`, {ctx.num_processes} host(s)" + (f", {kind}" if kind else "")
           + (f", preset `{ctx.preset}`" if ctx.preset else "")
           + (f", mesh {', '.join(f'{a}={n}' for a, n in ctx.mesh.items())}" if ctx.mesh else "") + "."]
    if ctx.fault.kind:
        out += ["", f"> **Testing fault injected:** {ctx.fault.describe()} (`--testing_fault`). "
                    "This report shows what the check catches; it says nothing about the hardware."]
    if report.aborted:
        out += ["", f"> **Stopped early** in {report.aborted.row}: {_md_escape(report.aborted.reason)}"]
    failures = report.failures()
    if failures:
        out += ["", "## What is wrong", ""]
        out += [f"- **{host_label(report, h)}**, {row}: {_md_escape(c.detail or c.value)}" for row, h, c in failures]
    out += ["", "## Checks", "", "| check | " + " | ".join(host_label(report, h) for h in report.hosts) + " |",
            "|---|" + "---|" * len(report.hosts)]
    for row in ROWS:
        cells = [report.cells[row][h] for h in report.hosts]
        out.append(f"| {row} | " + " | ".join(
            (f"**{c.status}**" if c.status == FAIL else c.status) + f" {_md_escape(c.value)}" for c in cells) + " |")
    out += (_consistency_section(report) + _interconnect_section(report) + _throughput_section(report)
            + _details_section(report))
    return "\n".join(out) + "\n"


def _consistency_section(report: Report) -> list[str]:
    if not report.facts:
        return []
    pod = pod_values(report.facts)
    hosts = sorted(report.facts)
    lines = ["", "## Consistency: what each host runs", "",
             "Values that differ from the pod's are in bold.", "",
             "| fact | pod | " + " | ".join(f"host {h}" for h in hosts) + " |", "|---|---|" + "---|" * len(hosts)]
    for name, value in pod.items():
        row = [report.facts[h].get(name, "absent") for h in hosts]
        lines.append(f"| {name} | {_md_escape(value)} | " + " | ".join(
            _md_escape(v) if v == value else f"**{_md_escape(v)}**" for v in row) + " |")
    return lines


def _throughput_section(report: Report) -> list[str]:
    if not report.throughput:
        return []
    cells = {h: c for h, c in sorted(report.cells[THROUGHPUT].items()) if "write_s" in c.metrics}
    lines = ["", "## Storage throughput", "",
             "Every host wrote its share of a checkpoint, all starting together, then read it back together "
             "(1 MB = 10^6 bytes).", "", f"All hosts together, {_pod_throughput(report)}.", "",
             "| host | bytes | write (s) | write (MB/s) | read (s) | read (MB/s) |", "|---|---|---|---|---|---|"]
    for host, cell in cells.items():
        m = cell.metrics
        lines.append(f"| {host_label(report, host)} | {m['bytes']:.0f} | {m['write_s']:.3f} | "
                     f"{m['write_mb_per_s']:.1f} | {m['read_s']:.3f} | {m['read_mb_per_s']:.1f} |")
    return lines


def _interconnect_section(report: Report) -> list[str]:
    if not report.measurements:
        return []
    kind = device_kind(report)
    ici = published_ici(kind) if kind else None
    hosts = sorted({h for m in report.measurements for h in m.latency_s})
    lines = ["", "## Interconnect", "",
             "Collective time is the collective's own (after the last host arrived); latency per host adds how "
             "late that host arrived. Bandwidths follow nccl-tests (algorithm: bytes / time; bus: scaled by "
             f"2(n-1)/n for all-reduce, (n-1)/n otherwise). Straggler threshold: "
             f"{report.context.straggler_factor:g}x the other hosts' latency.",
             "", f"Published ICI bandwidth per chip ({kind}): {ici:g} GB/s bidirectional." if ici else
             f"Published ICI bandwidth: none for {kind or 'these devices'} (not a TPU with a published figure).",
             "", "| axis | collective | bytes/device | time (ms) | algbw (GB/s) | busbw (GB/s) | "
             + " | ".join(f"host {h} latency (ms)" for h in hosts) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(hosts)]
    for m in report.measurements:
        lines.append(f"| {m.axis} (n={m.axis_size}) | {m.collective} | {m.nbytes} | {m.time_s * 1e3:.3f} | "
                     f"{m.algbw_gbytes_per_s:.3f} | {m.busbw_gbytes_per_s:.3f} | "
                     + " | ".join(f"{m.latency_s[h] * 1e3:.3f}" if h in m.latency_s else "" for h in hosts) + " |")
    return lines


def _details_section(report: Report) -> list[str]:
    lines = ["", "## Details", ""]
    for row in ROWS:
        lines.append(f"### {row}")
        lines.append("")
        for host, cell in sorted(report.cells[row].items()):
            spent = f" ({cell.seconds:.2f} s)" if cell.seconds else ""
            lines.append(f"- {host_label(report, host)}: **{cell.status}**{spent} {_md_escape(cell.detail or cell.value)}")
        lines.append("")
    return lines


def write(report: Report, run_dir: str) -> tuple[Path, Path]:
    """Both files, each written whole (a temporary name, then renamed)."""
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / JSON_NAME, directory / PAGE_NAME
    for path, text in zip(paths, (json.dumps(to_json(report), indent=1) + "\n", markdown(report)), strict=True):
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    return paths
