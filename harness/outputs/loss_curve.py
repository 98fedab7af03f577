"""The loss curve of a run, drawn with PIL: mean loss and max per-sample loss against
step, with the hard-example intervals marked. 1000x500 pixels.

Drawn without matplotlib, whose import alone costs about 0.4 s of the main job's end.
Both axes are linear; the step axis spans the logged steps and the marked ones:

    save_loss_curve(rows, run_dir / "loss_curve.png", hard_example_steps=[50, 100])
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from harness.outputs.pictures import font

SIZE = (1000, 500)
BOX = (80, 50, 970, 440)  # the plot area: left, top, right, bottom
LINES = (("loss", "mean loss", (31, 119, 180)), ("max_per_sample_loss", "max per-sample loss", (214, 39, 40)))
MARK_COLOR = (127, 127, 127)
_GRID = (228, 228, 228)
_INK = (20, 20, 20)
_PAPER = (255, 255, 255)


@dataclasses.dataclass(frozen=True)
class CurveAxes:
    """What the plot area shows: `steps` and `losses` are its (low, high) data ranges,
    `box` its pixels (left, top, right, bottom); low loss is at the bottom."""

    steps: tuple[float, float]
    losses: tuple[float, float]
    box: tuple[int, int, int, int]

    def pixel(self, step: float, loss: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        x = left + (step - self.steps[0]) / (self.steps[1] - self.steps[0]) * (right - left)
        y = bottom - (loss - self.losses[0]) / (self.losses[1] - self.losses[0]) * (bottom - top)
        return x, y


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _axes(series: dict[str, list[tuple[float, float]]], marks: Sequence[int]) -> CurveAxes:
    points = [p for line in series.values() for p in line]
    steps = [s for s, _ in points] + list(marks)
    losses = [v for _, v in points]
    step_range = (min(steps, default=0), max(steps, default=1))
    if step_range[0] == step_range[1]:
        step_range = (step_range[0] - 1, step_range[1] + 1)
    low, high = min(losses, default=0.0), max(losses, default=1.0)
    pad = (high - low) * 0.05 or 0.5
    ticks = nice_ticks(max(low - pad, 0.0) if low >= 0 else low - pad, high + pad, count=8)
    return CurveAxes(steps=(float(step_range[0]), float(step_range[1])), losses=(ticks[0], ticks[-1]), box=BOX)


def _dashed_vertical(draw: ImageDraw.ImageDraw, x: float, top: int, bottom: int) -> None:
    for y in range(top, bottom, 10):
        draw.line([(x, y), (x, min(y + 5, bottom))], fill=MARK_COLOR, width=1)


def render_loss_curve(rows: Sequence[Mapping[str, Any]], *, hard_example_steps: Sequence[int]) -> Image.Image:
    series = {key: sorted((row["step"], float(row[key])) for row in rows
                          if key in row and math.isfinite(float(row[key])))
              for key, _, _ in LINES}
    axes = _axes(series, hard_example_steps)
    image = Image.new("RGB", SIZE, _PAPER)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = axes.box
    small, title = font(13), font(18, bold=True)
    for value in nice_ticks(*axes.losses):
        if axes.losses[0] <= value <= axes.losses[1]:
            _, y = axes.pixel(axes.steps[0], value)
            draw.line([(left, y), (right, y)], fill=_GRID)
            draw.text((left - 8, y), f"{value:g}", font=small, fill=_INK, anchor="rm")
    for value in nice_ticks(*axes.steps):
        if axes.steps[0] <= value <= axes.steps[1]:
            x, _ = axes.pixel(value, axes.losses[0])
            draw.line([(x, top), (x, bottom)], fill=_GRID)
            draw.text((x, bottom + 8), f"{value:g}", font=small, fill=_INK, anchor="mt")
    for step in hard_example_steps:
        _dashed_vertical(draw, axes.pixel(step, 0.0)[0], top, bottom)
    for key, _, color in LINES:
        pixels = [axes.pixel(step, value) for step, value in series[key]]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2, joint="curve")
        elif pixels:
            (x, y), = pixels
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    draw.rectangle(axes.box, outline=_INK)
    draw.text(((left + right) / 2, 15), "Training loss", font=title, fill=_INK, anchor="mt")
    draw.text(((left + right) / 2, bottom + 30), "training step", font=small, fill=_INK, anchor="mt")
    draw.text((20, (top + bottom) / 2), "loss", font=small, fill=_INK, anchor="lm")
    legend = [(label, color) for key, label, color in LINES if series[key]]
    if hard_example_steps:
        legend.append(("hard examples collected", MARK_COLOR))
    if legend:
        draw.rectangle([right - 240, top + 4, right - 8, top + 24 + 20 * (len(legend) - 1)], fill=_PAPER, outline=_GRID)
    for i, (label, color) in enumerate(legend):
        y = top + 14 + 20 * i
        draw.line([(right - 230, y), (right - 200, y)], fill=color, width=2)
        draw.text((right - 192, y), label, font=small, fill=_INK, anchor="lm")
    if not any(series.values()):
        draw.text(((left + right) / 2, (top + bottom) / 2), "no metrics logged", font=small,
                  fill=MARK_COLOR, anchor="mm")
    return image


def save_loss_curve(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                    hard_example_steps: Sequence[int]) -> None:
    """`rows` are logged metrics with a "step" key; a row without "loss" or
    "max_per_sample_loss" (or with a non-finite one) is left out of that line."""
    image = render_loss_curve(rows, hard_example_steps=hard_example_steps)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
