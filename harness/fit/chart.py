"""harness-fit's PNGs: per-device memory by kind against HBM, and the targets' cost
against their step time (matplotlib, imported here only, so the rest of harness-fit
starts without it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.fit.economics import PRICES_AS_OF
from harness.fit.report import FitReport
from harness.fit.units import GIB, format_bytes

if TYPE_CHECKING:
    from harness.fit.compare import Comparison

COLORS = {"parameters": "#4C72B0", "optimizer state": "#55A868", "batch": "#C44E52", "step and rng": "#8172B2",
          "argument padding": "#CCB974", "temporaries": "#64B5CD", "outputs not aliased": "#DD8452",
          "generated code": "#937860"}


def write_chart(report: FitReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = report.memory.kinds()
    hbm = report.memory.hbm / GIB
    used = report.used_bytes
    figure, axis = plt.subplots(figsize=(11, 4.2), dpi=120)
    rows = ("by kind", "peak (compiler)" if report.fits else "required (compiler)")
    left = 0.0
    for name, value in kinds.items():
        axis.barh(rows[0], value / GIB, left=left, color=COLORS.get(name, "#999999"), edgecolor="white",
                  linewidth=0.5, label=f"{name}: {format_bytes(value)}")
        left += value / GIB
    summed = "summed" if report.fits else "of arguments (no breakdown from the compiler)"
    axis.text(left, 0, f"  {format_bytes(sum(kinds.values()))} {summed}", va="center", fontsize=10,
              bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if used is not None:
        axis.barh(rows[1], used / GIB, color="#2A9D8F" if report.fits else "#6D2E46")
        axis.text(used / GIB, 1, f"  {format_bytes(used)}", va="center", fontsize=10, fontweight="bold")
    axis.axvline(hbm, color="black", linestyle="--", linewidth=1.5)
    axis.text(hbm, 1.5, f" HBM {format_bytes(report.memory.hbm)}", va="center", fontsize=10)
    axis.set_xlim(0, max(hbm, left, (used or 0) / GIB) * 1.3)
    axis.set_ylim(-0.6, 1.8)
    axis.set_xlabel("GiB per device")
    headroom = report.headroom_percent
    slices = f" x{report.target.num_slices}" if report.target.num_slices > 1 else ""
    axis.set_title(f"{report.model['name']} {report.model.get('size') or ''} on {report.target.product}{slices}, "
                   f"global batch {report.batch_size}: {report.verdict}"
                   + ("" if headroom is None else f" ({headroom:+.1f}% headroom)"), fontsize=11)
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    note = ("The peak is what must fit: the compiler's figure for memory live at once, not the sum of the kinds."
            if report.fits else "Out of memory: 'required' is the compiler's figure from its refusal.")
    figure.text(0.01, 0.01, note, fontsize=8, color="#555555")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def write_cost_chart(comparison: Comparison, path: Path) -> None:
    """Cost of 1,000 steps against the estimated step time, one point per target that fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5), dpi=120)
    fitting = [row for row in comparison.rows if row.usd_per_1000_steps is not None]
    points = [row.report.cost.estimate_s * comparison.batch_size / row.report.batch_size for row in fitting]
    middle = (min(points, default=0) + max(points, default=0)) / 2
    for rank, (row, seconds) in enumerate(zip(fitting, points, strict=True), start=1):
        axis.scatter(seconds, row.usd_per_1000_steps, s=60, color="#2A9D8F" if rank == 1 else "#4C72B0", zorder=3)
        right = seconds > middle  # labels point inward, so none runs off the plot
        axis.annotate(f"{rank}. {row.product} (fsdp {row.settings['fsdp_devices']}, remat {row.settings['remat']})",
                      (seconds, row.usd_per_1000_steps), textcoords="offset points", xytext=(-6 if right else 6, 6),
                      ha="right" if right else "left", fontsize=9)
    axis.set_xlabel(f"estimated seconds per step of {comparison.batch_size} samples (MFU {comparison.assumptions.mfu:.2f})")
    axis.set_ylabel("USD per 1,000 steps (list price)")
    axis.grid(True, alpha=0.3)
    axis.set_title("Which pod? cost against step time", fontsize=11)
    left_out = [row.product for row in comparison.rows if row.usd_per_1000_steps is None]
    figure.text(0.01, 0.01, (f"Does not fit: {', '.join(left_out)}. " if left_out else "")
                + f"Prices per chip-hour as of {PRICES_AS_OF} (harness/fit/economics.py).", fontsize=8,
                color="#555555")
    axis.margins(0.25)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
