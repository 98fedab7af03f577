"""The harness's one way to draw: charts (the loss curve, harness-fit's memory and cost
charts) and the text of contact sheets, with PIL.

Why PIL: `python -X importtime` puts `import PIL.ImageDraw` at 21 ms and `import
matplotlib.pyplot` at 0.6-1.2 s (2026-12-06, 2 cores at load 6-9), paid at every run's end.

A chart is a plot area on paper that is drawn into in data coordinates:

    chart = Chart((1000, 500), box=(80, 50, 970, 440), x=(0, 200), y=(0.0, 4.0))
    chart.grid(x_ticks=nice_ticks(0, 200), y_ticks=nice_ticks(0.0, 4.0))
    chart.line([(0, 3.5), (100, 2.0), (200, 1.2)], BLUE)
    chart.frame()
    chart.title("Training loss")
    chart.image.save("loss.png")

Text is drawn at whole pixels, so the same string always has the same pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]  # left, top, right, bottom, in pixels

INK: Color = (20, 20, 20)
MUTED: Color = (105, 105, 105)
GRID: Color = (228, 228, 228)
PAPER: Color = (255, 255, 255)
# Tableau's colours (matplotlib's default cycle), and two for a verdict.
BLUE, ORANGE, GREEN, RED, PURPLE = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)
BROWN, GRAY, OLIVE, CYAN = (140, 86, 75), (127, 127, 127), (188, 189, 34), (23, 190, 207)
FITS: Color = (42, 157, 143)
DOES_NOT_FIT: Color = (109, 46, 70)


@dataclasses.dataclass(frozen=True)
class Font:
    """Pillow's built-in scalable font, so it is there wherever Pillow is: Aileron
    Regular, with ASCII and © « ° ± ´ · » ‘ ’ “ ” … ‹ › ⁄ ™ (other characters draw as
    boxes). No bold face ships with Pillow: bold is the outline with a thin stroke of
    the ink's own colour."""

    face: ImageFont.FreeTypeFont
    stroke: float

    def length(self, text: str) -> int:
        return math.ceil(self.face.getlength(text) + 2 * self.stroke)

    @property
    def line_height(self) -> int:
        ascent, descent = self.face.getmetrics()
        return ascent + descent + 2

    def corner(self, xy: tuple[float, float], text: str, anchor: str) -> tuple[int, int]:
        """The whole-pixel top-left corner ("la") of `text` anchored at `xy`; `anchor`
        is Pillow's: l/m/r horizontally, a (top)/m/s (baseline)/d (bottom) vertically."""
        ascent, descent = self.face.getmetrics()
        dx = {"l": 0.0, "m": self.length(text) / 2, "r": float(self.length(text))}[anchor[0]]
        dy = {"a": 0.0, "m": (ascent + descent) / 2, "s": float(ascent), "d": float(ascent + descent)}[anchor[1]]
        return round(xy[0] - dx), round(xy[1] - dy)

    def box(self, xy: tuple[float, float], text: str, anchor: str = "la") -> Box:
        left, top = self.corner(xy, text, anchor)
        ascent, descent = self.face.getmetrics()
        return left, top, left + self.length(text), top + ascent + descent

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, *, fill: Color = INK,
             anchor: str = "la") -> None:
        draw.text(self.corner(xy, text, anchor), text, font=self.face, fill=fill, anchor="la",
                  stroke_width=self.stroke, stroke_fill=fill)


@functools.cache
def font(size: int, bold: bool = False) -> Font:
    """Cached: every chart asks for the same few sizes."""
    return Font(ImageFont.load_default(size), stroke=round(size / 32, 2) if bold else 0.0)


def fit_text(text: str, face: Font, width: float) -> str:
    """`text`, cut and ended with '…' if it is wider than `width` pixels."""
    if face.length(text) <= width:
        return text
    while text and face.length(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def tick_format(ticks: Sequence[float]) -> Callable[[float], str]:
    """Every tick with the decimals its spacing needs (0.5 apart gives one); below
    0.001 apart, in exponent form (2e-05), which stays short."""
    spacing = min((abs(b - a) for a, b in zip(ticks, ticks[1:])), default=1.0)
    decimals = max(0, -math.floor(math.log10(spacing) + 1e-9)) if spacing > 0 else 0
    return "{:.3g}".format if decimals > 3 else f"{{:.{decimals}f}}".format


def padded(values: Sequence[float], fraction: float) -> tuple[float, float]:
    """The range of `values` widened by `fraction` of its span on each side (of the
    value itself, or 1, when all are equal)."""
    low, high = min(values, default=0.0), max(values, default=1.0)
    pad = (high - low) * fraction or abs(high) * fraction or 1.0
    return low - pad, high + pad


@dataclasses.dataclass(frozen=True)
class Axes:
    """What the plot area shows: `x` and `y` are its (low, high) data ranges, `box` its
    pixels (left, top, right, bottom); low y is at the bottom. Both axes are linear."""

    x: tuple[float, float]
    y: tuple[float, float]
    box: Box

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return (left + (x - self.x[0]) / (self.x[1] - self.x[0]) * (right - left),
                bottom - (y - self.y[0]) / (self.y[1] - self.y[0]) * (bottom - top))


@dataclasses.dataclass(frozen=True)
class LegendEntry:
    label: str
    color: Color
    mark: str = "line"  # "line", "dashes" or "box"


@functools.cache
def _disc(radius: int) -> Image.Image:
    """A coverage mask of a disc 2 * radius + 1 pixels wide, drawn 4x larger and shrunk."""
    side = 2 * radius + 1
    large = Image.new("L", (4 * side, 4 * side), 0)
    ImageDraw.Draw(large).ellipse([0, 0, 4 * side - 1, 4 * side - 1], fill=255)
    return large.resize((side, side), Image.Resampling.BOX)


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class Chart:
    """One picture: a plot area (`box`, in pixels) on paper, showing the data ranges
    `x` and `y`. Methods draw in the order they are called."""

    def __init__(self, size: tuple[int, int], *, box: Box, x: tuple[float, float], y: tuple[float, float]):
        self.image = Image.new("RGB", size, PAPER)
        self.draw = ImageDraw.Draw(self.image)
        self.axes = Axes(x=x, y=y, box=box)
        self._taken: list[Box] = []  # the dots and point labels drawn so far

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        return self.axes.pixel(x, y)

    def grid(self, *, x_ticks: Sequence[float] = (), y_ticks: Sequence[float] = (), size: int = 13) -> None:
        """Light grid lines at the ticks inside the plot area, labelled outside it with
        as many decimals as the ticks' spacing needs (2.5, 3.0, 3.5)."""
        left, top, right, bottom = self.axes.box
        small = font(size)
        x_format, y_format = tick_format(x_ticks), tick_format(y_ticks)
        for value in y_ticks:
            if self.axes.y[0] <= value <= self.axes.y[1]:
                y = round(self.pixel(self.axes.x[0], value)[1])
                self.draw.line([(left, y), (right, y)], fill=GRID)
                small.draw(self.draw, (left - 8, y), y_format(value), anchor="rm")
        for value in x_ticks:
            if self.axes.x[0] <= value <= self.axes.x[1]:
                x = round(self.pixel(value, self.axes.y[0])[0])
                self.draw.line([(x, top), (x, bottom)], fill=GRID)
                small.draw(self.draw, (x, bottom + 8), x_format(value), anchor="ma")

    def row_labels(self, labels: dict[float, str], size: int = 13) -> None:
        """Category names left of the plot area, at their y values."""
        for value, text in labels.items():
            font(size).draw(self.draw, (self.axes.box[0] - 8, self.pixel(self.axes.x[0], value)[1]), text, anchor="rm")

    def frame(self) -> None:
        self.draw.rectangle(self.axes.box, outline=INK)

    def title(self, text: str, size: int = 18) -> None:
        """Bold, centred over the plot area (over the picture if it is wider), cut to fit."""
        left, top, right, _ = self.axes.box
        face = font(size, bold=True)
        text = fit_text(text, face, self.image.width - 20)
        middle = min(max((left + right) / 2, 10 + face.length(text) / 2), self.image.width - 10 - face.length(text) / 2)
        face.draw(self.draw, (middle, top - 12), text, anchor="md")

    def x_label(self, text: str, size: int = 13) -> None:
        left, _, right, bottom = self.axes.box
        font(size).draw(self.draw, ((left + right) / 2, bottom + 30), text, anchor="ma")

    def y_label(self, text: str, size: int = 13) -> None:
        """Turned a quarter left, centred on the plot area's height, at the picture's edge."""
        face = font(size)
        ascent, descent = face.face.getmetrics()
        tile = Image.new("RGB", (face.length(text), ascent + descent), PAPER)
        face.draw(ImageDraw.Draw(tile), (0, 0), text)
        tile = tile.transpose(Image.Transpose.ROTATE_90)
        _, top, _, bottom = self.axes.box
        self.image.paste(tile, (14, round((top + bottom) / 2 - tile.height / 2)))

    def footnote(self, text: str, size: int = 12) -> None:
        face = font(size)
        face.draw(self.draw, (10, self.image.height - 8), fit_text(text, face, self.image.width - 20), fill=MUTED,
                  anchor="ld")

    def line(self, points: Sequence[tuple[float, float]], color: Color, width: int = 2) -> None:
        """A polyline through `points` (data), or a dot if there is one."""
        pixels = [self.pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            self.draw.line(pixels, fill=color, width=width, joint="curve")
        elif pixels:
            self.point(*points[0], color, radius=3)

    def dashed(self, x: float, *, color: Color, width: int = 1) -> None:
        """A dashed vertical line across the plot area at data `x`, `width` pixels wide
        and centred there (a 2-pixel line's seam is at `x`)."""
        _, top, _, bottom = self.axes.box
        column = round(self.pixel(x, self.axes.y[0])[0]) - (1 if width % 2 == 0 else 0)
        for start in range(round(top), round(bottom), 10):
            self.draw.line([(column, start), (column, min(start + 5, bottom))], fill=color, width=width)

    def bars(self, y: float, segments: Sequence[tuple[float, Color]], *, height: float = 0.8) -> float:
        """A horizontal bar at row `y`, `height` rows tall, of `segments` (length, colour)
        laid end to end from 0, white seams between them; returns its end (data)."""
        end = 0.0
        for length, color in segments:
            (x0, y0), (x1, y1) = self.pixel(end, y + height / 2), self.pixel(end + length, y - height / 2)
            if round(x1) > round(x0):
                self.draw.rectangle([round(x0), round(y0), round(x1) - 1, round(y1)], fill=color)
                if end > 0:
                    self.draw.line([(round(x0), round(y0)), (round(x0), round(y1))], fill=PAPER)
            end += length
        return end

    def point(self, x: float, y: float, color: Color, radius: int = 6) -> None:
        """A round dot, its edge smoothed; later labels keep clear of it."""
        px, py = (round(v) for v in self.pixel(x, y))
        self.image.paste(color, (px - radius, py - radius), _disc(radius))
        self._taken.append((px - radius, py - radius, px + radius + 1, py + radius + 1))

    def text(self, xy: tuple[float, float], text: str, *, size: int = 13, bold: bool = False, fill: Color = INK,
             anchor: str = "la") -> Box:
        """`text` at pixel `xy` on a paper backing (so grid and marker lines stay out of
        it); returns its box."""
        face = font(size, bold)
        left, top, right, bottom = face.box(xy, text, anchor)
        self.draw.rectangle([left - 2, top - 1, right + 1, bottom], fill=PAPER)
        face.draw(self.draw, xy, text, fill=fill, anchor=anchor)
        return left, top, right, bottom

    def beside(self, x: float, y: float, text: str, *, size: int = 13, bold: bool = False, gap: int = 6) -> Box:
        """`text` just right of data point (x, y), or just left of it if it would leave
        the plot area."""
        px, py = self.pixel(x, y)
        face = font(size, bold)
        right = px + gap + face.length(text) <= self.axes.box[2] - 4
        return self.text((px + gap if right else px - gap, py), text, size=size, bold=bold,
                         anchor="lm" if right else "rm")

    def label_point(self, x: float, y: float, text: str, *, size: int = 12) -> Box:
        """A label by the point (x, y) on the side facing the plot's middle (so it never
        runs off it), clear of earlier labels and points: above, else below, else the
        other side, else a line or two further off with a thin leader to its point."""
        px, py = self.pixel(x, y)
        left, top, right, bottom = self.axes.box
        face = font(size)
        inward = px <= (left + right) / 2

        def spot(rightward: bool, dy: int) -> tuple[tuple[float, float], str]:
            return (px + 8 if rightward else px - 8, py + dy), ("l" if rightward else "r") + ("d" if dy < 0 else "a")

        def clear(option: tuple[bool, int]) -> bool:
            xy, anchor = spot(*option)
            box = face.box(xy, text, anchor)
            inside = box[0] >= left + 3 and box[2] <= right - 3 and box[1] >= top + 3 and box[3] <= bottom - 3
            return inside and not any(_overlaps(box, taken) for taken in self._taken)

        options = [(side, sign * lift) for lift in (7, 7 + face.line_height, 7 + 2 * face.line_height)
                   for side in (inward, not inward) for sign in (-1, 1)]
        rightward, dy = next(filter(clear, options), options[0])
        xy, anchor = spot(rightward, dy)
        if abs(dy) > 7:
            reach = math.hypot(xy[0] - px, xy[1] - py)
            edge = (px + (xy[0] - px) * 8 / reach, py + (xy[1] - py) * 8 / reach)
            self.draw.line([edge, xy], fill=GRAY)
        placed = self.text(xy, text, size=size, anchor=anchor)
        self._taken.append(placed)
        return placed

    def legend(self, entries: Sequence[LegendEntry], *, at: tuple[float, float], size: int = 13,
               framed: bool = True) -> None:
        """`entries` one per line from the top-left corner `at` (pixels), each a short
        line, dashes or a square of its colour before its label."""
        face = font(size)
        x, y = at
        row = face.line_height + 5
        if framed and entries:
            self.draw.rectangle([x, y, x + self.legend_width(entries, size), y + 10 + row * len(entries)], fill=PAPER,
                                outline=GRID)
        for i, entry in enumerate(entries):
            middle = round(y + 5 + row * i + row / 2)
            if entry.mark == "box":
                self.draw.rectangle([x + 12, middle - 6, x + 30, middle + 6], fill=entry.color)
            elif entry.mark == "dashes":
                for start in (x + 10, x + 20, x + 30):
                    self.draw.line([(start, middle), (start + 5, middle)], fill=entry.color)
            else:
                self.draw.line([(x + 10, middle), (x + 40, middle)], fill=entry.color, width=2)
            face.draw(self.draw, (x + 48, middle), entry.label, anchor="lm")

    @staticmethod
    def legend_width(entries: Sequence[LegendEntry], size: int = 13) -> int:
        return 52 + max((font(size).length(e.label) for e in entries), default=0)

    def note(self, text: str, size: int = 13) -> None:
        """A muted message in the middle of the plot area (for an empty chart)."""
        left, top, right, bottom = self.axes.box
        self.text(((left + right) / 2, (top + bottom) / 2), text, size=size, fill=MUTED, anchor="mm")


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
