"""harness-fit's charts, read by what they show: the plot frame, the dashed HBM line and
every bar found by their colours in the pixels and measured against the bytes they stand
for; each label found pixel for pixel where it belongs (tests/support/picture_reading.py).
No compiler: the results are made by hand (tests/support/fit_reports.py).

    .venv/bin/python -m pytest -q tests/test_fit_chart.py
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.fit.chart import BEST, COLORS, OTHER, write_chart, write_cost_chart
from harness.fit.economics import PRICES_AS_OF
from harness.outputs import plot
from harness.outputs.plot import font
from tests.support.fit_reports import HBM, KINDS, PEAK, REQUIRED, comparison, memory_report, target_row
from tests.support.picture_reading import color_mask, find_text, largest_component, long_lines, pixels_of

GIB = 1 << 30


def _frame(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """The plot area's dark frame: (left, top, right, bottom)."""
    (top, bottom), (left, right) = long_lines((pixels < 60).all(axis=2))
    return int(left), int(top), int(right), int(bottom)


def _one(pixels: np.ndarray, text: str, face, color=plot.INK) -> tuple[int, int]:
    hits = find_text(pixels, text, face, color)
    assert len(hits) == 1, (text, hits)
    return hits[0]


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _hbm_column(pixels: np.ndarray, frame) -> float:
    """The dashed HBM line's middle (the seam between its two columns): the columns
    inside the frame that are dark over 40% of their height or more."""
    left, top, right, bottom = frame
    dark = (pixels[top + 1:bottom, left + 1:right] < 60).all(axis=2).mean(axis=0)
    columns = np.nonzero(dark > 0.4)[0]
    assert 1 <= len(columns) <= 2 and np.ptp(columns) <= 1, columns
    return left + 1 + float(columns.mean()) + 0.5


@pytest.mark.parametrize("fits", [True, False])
def test_memory_chart_bars_against_the_hbm_line(tmp_path, fits):
    write_chart(memory_report(fits), tmp_path / "fit_memory.png")
    with Image.open(tmp_path / "fit_memory.png") as png:
        assert (png.format, png.size, png.text) == ("PNG", (1320, 504), {})
        pixels = pixels_of(png)
    frame = _frame(pixels)
    left, top, right, bottom = frame
    hbm_x = _hbm_column(pixels, frame)
    per_gib = (hbm_x - left) / (HBM / GIB)  # pixels per GiB, from the HBM line alone
    # Bars start at 0 GiB, the frame's left column; their first pixel is the frame's (or a
    # white seam between kinds), so a bar from a to b GiB is coloured on [a + 1, b) pixels.

    # The compiler's bar: its length against the HBM line's distance is peak/HBM.
    used, color = (PEAK, plot.FITS) if fits else (REQUIRED, plot.DOES_NOT_FIT)
    bar = _extent(largest_component(color_mask(pixels, color)))
    assert bar[0] == left + 1
    assert abs((bar[2] + 1 - left) - used / GIB * per_gib) <= 1.0, (bar, used / HBM)
    assert (bar[2] > hbm_x) == (not fits)

    # The kinds end to end on the row below, each as long as its bytes.
    shown = KINDS if fits else {k: KINDS[k] for k in ("parameters", "optimizer state", "batch", "step and rng")}
    end = float(left)
    for name, value in shown.items():
        width = value / GIB * per_gib
        mask = color_mask(pixels, COLORS[name])
        mask[:, right:] = False  # the legend
        if width < 3:
            end += width
            continue
        segment = _extent(largest_component(mask))
        assert segment[1] > bar[3], name  # below the compiler's bar
        assert abs(segment[0] - 1 - end) <= 1 and abs(segment[2] + 1 - (end + width)) <= 1, (name, segment, end, width)
        end += width
    if not fits:
        assert not color_mask(pixels, COLORS["temporaries"]).any()

    # Every label, pixel for pixel, where it belongs.
    headroom = f"{100 * (HBM - used) / HBM:+.1f}% headroom"
    verdict = "FITS" if fits else "DOES NOT FIT"
    assert headroom == ("+55.6% headroom" if fits else "-27.0% headroom")
    title = _one(pixels, f"transformer 1b on v5litepod-16, global batch 256: {verdict} ({headroom})", font(16, True))
    assert title[1] < top
    hbm_label = _one(pixels, "HBM 15.75 GiB", font(13))
    assert 0 < hbm_label[0] - hbm_x <= 10 and top < hbm_label[1] < bar[1]
    used_label = _one(pixels, "7.00 GiB" if fits else "20.00 GiB", font(13, True))
    assert 0 < used_label[0] - bar[2] <= 10 and bar[1] < used_label[1] < bar[3]
    summed = "7.50 GiB summed" if fits else "3.50 GiB of arguments (no breakdown from the compiler)"
    assert abs(sum(shown.values()) / GIB - float(summed.split()[0])) < 0.005
    sum_label = _one(pixels, summed, font(13))
    assert 0 < sum_label[0] - end <= 10 and sum_label[1] > bar[3]
    assert _one(pixels, "by kind", font(13))[0] < left
    assert _one(pixels, "peak (compiler)" if fits else "required (compiler)", font(13))[0] < left
    assert _one(pixels, "GiB per device", font(13))[1] > bottom
    footnote = ("The peak is what must fit: the compiler's figure for memory live at once, not the sum of the kinds."
                if fits else "Out of memory: 'required' is the compiler's figure from its refusal.")
    assert _one(pixels, footnote, font(12), plot.MUTED)[1] > bottom

    # The legend: one square of each kind's colour, right of the plot, beside its label.
    legend = {"parameters: 1.00 GiB", "optimizer state: 2.00 GiB", "batch: 512.00 MiB", "step and rng: 12 B"}
    if fits:
        legend |= {"argument padding: 4.00 KiB", "temporaries: 4.00 GiB", "outputs not aliased: 0 B",
                   "generated code: 1.00 MiB"}
    assert len(legend) == len(shown)
    for label in legend:
        name = label.split(":")[0]
        x, y = _one(pixels, label, font(13))
        square = _extent(color_mask(pixels, COLORS[name]) & (np.arange(pixels.shape[1]) > right)[None, :])
        assert square[2] - square[0] >= 12 and 0 < x - square[2] <= 30 and square[1] <= y + 6 <= square[3], label


def _centres(pixels: np.ndarray, color, frame) -> list[tuple[float, float]]:
    """Centres of the dots of `color` inside the frame (each a disc about 13 pixels wide)."""
    from scipy import ndimage

    left, top, right, bottom = frame
    mask = np.zeros(pixels.shape[:2], bool)
    mask[top + 1:bottom, left + 1:right] = color_mask(pixels, color)[top + 1:bottom, left + 1:right]
    labels, count = ndimage.label(mask)
    found = ndimage.center_of_mass(mask, labels, range(1, count + 1))
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return [(float(x), float(y)) for (y, x), size in zip(found, sizes) if size > 60]


def test_cost_chart_one_dot_per_fitting_target_the_cheapest_lowest(tmp_path):
    """Four targets fit (costs asked at batch 512: a batch-256 row's doubles), one does not."""
    rows = [target_row("v5litepod-16", seconds=0.5, usd=2.0, batch_size=256, requested=512),  # 1.0 s, $4.00
            target_row("v6e-8", seconds=1.2, usd=3.0, batch_size=512, requested=512),
            target_row("v5litepod-32", seconds=0.3, usd=3.5, batch_size=512, requested=512),
            target_row("v5p-8", seconds=0.8, usd=5.0, batch_size=512, requested=512),
            target_row("v4-8", seconds=1.0, usd=1.0, batch_size=512, requested=512, fits=False)]
    write_cost_chart(comparison(rows, 512), tmp_path / "fit_targets.png")
    with Image.open(tmp_path / "fit_targets.png") as png:
        assert (png.format, png.size, png.text) == ("PNG", (960, 600), {})
        pixels = pixels_of(png)
    frame = _frame(pixels)
    left, top, right, bottom = frame

    [best], others = _centres(pixels, BEST, frame), _centres(pixels, OTHER, frame)
    assert len(others) == 3
    assert best[1] > max(y for _, y in others)  # the cheapest is the lowest
    # Linear axes: the dots' pixels are an affine function of (seconds, dollars).
    expected = {(1.2, 3.0), (0.3, 3.5), (1.0, 4.0), (0.8, 5.0)}
    seconds, dollars = zip(*sorted(expected, key=lambda p: p[1]))
    found = [best] + sorted(others, key=lambda c: -c[1])  # by height: cheapest first
    xs, ys = np.array([c[0] for c in found]), np.array([c[1] for c in found])
    for data, pix, sign in ((np.array(seconds), xs, 1), (np.array(dollars), ys, -1)):
        slope, intercept = np.polyfit(data, pix, 1)
        assert np.sign(slope) == sign and np.abs(pix - (slope * data + intercept)).max() <= 1.0, (data, pix)

    # Rank-numbered labels inside the plot, each nearer its own dot than any other.
    labels = ["1. v6e-8 (fsdp 8, remat full)", "2. v5litepod-32 (fsdp 32, remat full)",
              "3. v5litepod-16 (fsdp 16, remat full)", "4. v5p-8 (fsdp 4, remat full)"]
    for label, dot in zip(labels, found):
        x, y = _one(pixels, label, font(12))
        width = font(12).length(label)
        assert left < x and x + width < right and top < y < bottom, label
        nearest = min(found, key=lambda c: np.hypot(np.clip(c[0], x, x + width) - c[0], np.clip(c[1], y, y + 12) - c[1]))
        assert nearest == dot, label
    assert _one(pixels, "estimated seconds per step of 512 samples (MFU 0.40)", font(13))[1] > bottom
    y_label = _one(np.ascontiguousarray(np.rot90(pixels, k=-1)), "USD per 1,000 steps (list price)", font(13))
    assert y_label[1] + 16 < left  # turned a quarter left (rows of the turned-back image are columns), left of the frame
    assert _one(pixels, "Which pod? cost against step time", font(16, True))[1] < top
    footnote = f"Does not fit: v4-8. Prices per chip-hour as of {PRICES_AS_OF} (harness/fit/economics.py)."
    assert _one(pixels, footnote, font(12), plot.MUTED)[1] > bottom


def test_crowded_dots_get_labels_that_do_not_overlap(tmp_path):
    """Three dots within a few pixels of each other, and two more close by: every label
    is found whole (nothing drawn over it) inside the plot."""
    points = [("v5litepod-16", 1.0, 3.0), ("v5litepod-32", 1.02, 3.03), ("v5litepod-64", 1.03, 3.05),
              ("v6e-16", 1.45, 3.95), ("v6e-8", 1.5, 4.0), ("v5p-8", 0.4, 6.0)]
    rows = [target_row(product, seconds=s, usd=usd, batch_size=512, requested=512) for product, s, usd in points]
    write_cost_chart(comparison(rows, 512), tmp_path / "fit_targets.png")
    with Image.open(tmp_path / "fit_targets.png") as png:
        pixels = pixels_of(png)
    left, top, right, bottom = _frame(pixels)
    fsdp = {"v5litepod-16": 16, "v5litepod-32": 32, "v5litepod-64": 64, "v6e-16": 16, "v6e-8": 8, "v5p-8": 4}
    for rank, (product, _, _) in enumerate(points, start=1):
        label = f"{rank}. {product} (fsdp {fsdp[product]}, remat full)"
        x, y = _one(pixels, label, font(12))
        assert left < x and x + font(12).length(label) < right and top < y < bottom, label


def test_cost_chart_when_nothing_fits(tmp_path):
    rows = [target_row("v4-8", seconds=1.0, usd=1.0, batch_size=512, requested=512, fits=False)]
    write_cost_chart(comparison(rows, 512), tmp_path / "fit_targets.png")
    with Image.open(tmp_path / "fit_targets.png") as png:
        pixels = pixels_of(png)
    assert not color_mask(pixels, BEST).any() and not color_mask(pixels, OTHER).any()
    _one(pixels, "no target fits", font(13), plot.MUTED)
    _one(pixels, f"Does not fit: v4-8. Prices per chip-hour as of {PRICES_AS_OF} (harness/fit/economics.py).",
         font(12), plot.MUTED)
