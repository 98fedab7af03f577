"""The loss curve of a run: mean loss and max per-sample loss against step, with the
hard-example intervals marked. 1000x500 pixels, drawn by harness/outputs/plot.py.

Both axes are linear; the step axis spans the logged steps and the marked ones:

    save_loss_curve(rows, run_dir / "loss_curve.png", hard_example_steps=[50, 100])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from harness.outputs.plot import BLUE, GRAY, RED, Chart, LegendEntry, nice_ticks, save_png

SIZE = (1000, 500)
BOX = (80, 50, 970, 440)  # the plot area: left, top, right, bottom
LINES = (("loss", "mean loss", BLUE), ("max_per_sample_loss", "max per-sample loss", RED))
MARK_COLOR = GRAY


def _ranges(series: dict[str, list[tuple[float, float]]],
            marks: Sequence[int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The step range (logged and marked steps) and a loss range ending on round ticks."""
    points = [p for line in series.values() for p in line]
    steps = [s for s, _ in points] + list(marks)
    losses = [v for _, v in points]
    step_range = (min(steps, default=0), max(steps, default=1))
    if step_range[0] == step_range[1]:
        step_range = (step_range[0] - 1, step_range[1] + 1)
    low, high = min(losses, default=0.0), max(losses, default=1.0)
    pad = (high - low) * 0.05 or 0.5
    ticks = nice_ticks(max(low - pad, 0.0) if low >= 0 else low - pad, high + pad, count=8)
    return (float(step_range[0]), float(step_range[1])), (ticks[0], ticks[-1])


def render_loss_curve(rows: Sequence[Mapping[str, Any]], *, hard_example_steps: Sequence[int]) -> Image.Image:
    series = {key: sorted((row["step"], float(row[key])) for row in rows
                          if key in row and math.isfinite(float(row[key])))
              for key, _, _ in LINES}
    steps, losses = _ranges(series, hard_example_steps)
    chart = Chart(SIZE, box=BOX, x=steps, y=losses)
    chart.grid(x_ticks=nice_ticks(*steps), y_ticks=nice_ticks(*losses))
    for step in hard_example_steps:
        chart.dashed(step, color=MARK_COLOR)
    for key, _, color in LINES:
        chart.line(series[key], color)
    chart.frame()
    chart.title("Training loss")
    chart.x_label("training step")
    chart.y_label("loss")
    legend = [LegendEntry(label, color) for key, label, color in LINES if series[key]]
    if hard_example_steps:
        legend.append(LegendEntry("hard examples collected", MARK_COLOR, "dashes"))
    if legend:
        chart.legend(legend, at=(BOX[2] - 8 - Chart.legend_width(legend), BOX[1] + 4))
    if not any(series.values()):
        chart.note("no metrics logged")
    return chart.image


def save_loss_curve(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                    hard_example_steps: Sequence[int]) -> None:
    """`rows` are logged metrics with a "step" key; a row without "loss" or
    "max_per_sample_loss" (or with a non-finite one) is left out of that line."""
    save_png(render_loss_curve(rows, hard_example_steps=hard_example_steps), path)
