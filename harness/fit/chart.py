"""harness-fit's PNGs, drawn by harness/outputs/plot.py: per-device memory by kind
against HBM (`fit_memory.png`), and the targets' cost against their step time
(`fit_targets.png`, for `--targets`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.fit.economics import PRICES_AS_OF
from harness.fit.report import FitReport
from harness.fit.units import GIB
from harness.runtime.memory import format_bytes
from harness.outputs import plot
from harness.outputs.plot import Chart, LegendEntry, nice_ticks

if TYPE_CHECKING:
    from harness.fit.compare import Comparison

COLORS = {"parameters": plot.BLUE, "optimizer state": plot.GREEN, "batch": plot.RED, "step and rng": plot.PURPLE,
          "argument padding": plot.OLIVE, "temporaries": plot.CYAN, "outputs not aliased": plot.ORANGE,
          "generated code": plot.BROWN}
MEMORY_SIZE = (1320, 504)
COST_SIZE = (960, 600)
BEST = plot.FITS          # the cheapest target's point
OTHER = plot.BLUE         # every other target that fits


def memory_title(report: FitReport) -> str:
    headroom = report.headroom_percent
    slices = f" x{report.target.num_slices}" if report.target.num_slices > 1 else ""
    return (f"{report.model['name']} {report.model.get('size') or ''} on {report.target.product}{slices}, "
            f"global batch {report.batch_size}: {report.verdict}"
            + ("" if headroom is None else f" ({headroom:+.1f}% headroom)"))


def write_chart(report: FitReport, path: Path) -> None:
    """Two bars in GiB per device: the kinds end to end (with their sum), and the
    compiler's peak (or, out of memory, what it required), against a dashed HBM line."""
    kinds = report.memory.kinds()
    hbm = report.memory.hbm / GIB
    used = report.used_bytes
    summed = sum(kinds.values()) / GIB
    legend = [LegendEntry(f"{name}: {format_bytes(value)}", COLORS[name], "box") for name, value in kinds.items()]
    right = MEMORY_SIZE[0] - 30 - Chart.legend_width(legend)
    ticks = nice_ticks(0.0, max(hbm, summed, (used or 0) / GIB) * 1.25)
    chart = Chart(MEMORY_SIZE, box=(170, 50, right, 430), x=(0.0, ticks[-1]), y=(-0.6, 1.8))
    chart.grid(x_ticks=ticks)
    chart.row_labels({0: "by kind", 1: "peak (compiler)" if report.fits else "required (compiler)"})
    end = chart.bars(0, [(value / GIB, COLORS[name]) for name, value in kinds.items()])
    sum_note = "summed" if report.fits else "of arguments (no breakdown from the compiler)"
    if used is not None:
        chart.bars(1, [(used / GIB, plot.FITS if report.fits else plot.DOES_NOT_FIT)])
    chart.dashed(hbm, color=plot.INK, width=2)
    chart.beside(end, 0, f"{format_bytes(sum(kinds.values()))} {sum_note}")
    if used is not None:
        chart.beside(used / GIB, 1, format_bytes(used), bold=True)
    chart.beside(hbm, 1.6, f"HBM {format_bytes(report.memory.hbm)}")
    chart.frame()
    chart.title(memory_title(report), size=16)
    chart.x_label("GiB per device")
    chart.legend(legend, at=(right + 20, 240 - len(legend) * 11), framed=False)
    chart.footnote("The peak is what must fit: the compiler's figure for memory live at once, not the sum of the kinds."
                   if report.fits else "Out of memory: 'required' is the compiler's figure from its refusal.")
    plot.save_png(chart.image, path)


def point_label(rank: int, row) -> str:
    return f"{rank}. {row.product} (fsdp {row.settings['fsdp_devices']}, remat {row.settings['remat']})"


def write_cost_chart(comparison: Comparison, path: Path) -> None:
    """Cost of 1,000 steps against the estimated step time, one point per target that
    fits, numbered by rank; the cheapest in its own colour."""
    fitting = [row for row in comparison.rows if row.usd_per_1000_steps is not None]
    seconds = [row.report.cost.estimate_s * comparison.batch_size / row.report.batch_size for row in fitting]
    dollars = [row.usd_per_1000_steps for row in fitting]
    x, y = plot.padded(seconds, 0.25), plot.padded(dollars, 0.25)
    chart = Chart(COST_SIZE, box=(90, 50, 935, 500), x=x, y=y)
    chart.grid(x_ticks=nice_ticks(*x, count=7), y_ticks=nice_ticks(*y, count=7))
    for rank, (s, usd) in enumerate(zip(seconds, dollars), start=1):
        chart.point(s, usd, BEST if rank == 1 else OTHER)
    for rank, (row, s, usd) in enumerate(zip(fitting, seconds, dollars, strict=True), start=1):
        chart.label_point(s, usd, point_label(rank, row))
    if not fitting:
        chart.note("no target fits")
    chart.frame()
    chart.title("Which pod? cost against step time", size=16)
    chart.x_label(f"estimated seconds per step of {comparison.batch_size} samples (MFU {comparison.assumptions.mfu:.2f})")
    chart.y_label("USD per 1,000 steps (list price)")
    left_out = [row.product for row in comparison.rows if row.usd_per_1000_steps is None]
    chart.footnote((f"Does not fit: {', '.join(left_out)}. " if left_out else "")
                   + f"Prices per chip-hour as of {PRICES_AS_OF} (harness/fit/economics.py).")
    plot.save_png(chart.image, path)
