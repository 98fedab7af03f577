"""The drawing module (harness/outputs/plot.py): round ticks, whole-pixel text, and every
picture the harness draws made in a process where matplotlib cannot be imported.

    .venv/bin/python -m pytest -q tests/test_plot.py
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from PIL import Image, ImageDraw

from harness.outputs import plot
from harness.outputs.plot import Chart, font, nice_ticks, padded, tick_format
from tests.support.picture_reading import find_text, pixels_of
from tests.support.runs import REPO_ROOT, failure_report, harness_env


@pytest.mark.parametrize("low, high, expected", [
    (0.0, 10.0, [0, 2, 4, 6, 8, 10]),
    (0.13, 0.97, [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]),
    (-3.0, 47.0, [-10, 0, 10, 20, 30, 40, 50]),
])
def test_nice_ticks_cover_the_range_in_round_steps(low, high, expected):
    ticks = nice_ticks(low, high)
    assert ticks == pytest.approx(expected)
    assert ticks[0] <= low and ticks[-1] >= high


@pytest.mark.parametrize("ticks, labels", [
    ([0.0, 5.0, 10.0], ["0", "5", "10"]),
    ([2.5, 3.0, 3.5], ["2.5", "3.0", "3.5"]),
    ([0.0, 0.2, 0.4, 0.6000000000000001], ["0.0", "0.2", "0.4", "0.6"]),
    ([0.001, 0.002], ["0.001", "0.002"]),
    ([0.0, 1e-05, 2e-05, 3.0000000000000004e-05], ["0", "1e-05", "2e-05", "3e-05"]),
])
def test_tick_labels_have_the_decimals_their_spacing_needs(ticks, labels):
    assert [tick_format(ticks)(t) for t in ticks] == labels


def test_padded_ranges():
    assert padded([1.0, 3.0], 0.25) == (0.5, 3.5)
    assert padded([2.0], 0.25) == (1.5, 2.5)     # one value: a quarter of itself each side
    assert padded([], 0.25) == (-0.25, 1.25)


def test_the_same_text_has_the_same_pixels_anywhere_and_bold_has_more_ink():
    chart = Chart((400, 200), box=(50, 20, 390, 180), x=(0.0, 1.0), y=(0.0, 1.0))
    chart.grid(x_ticks=[0.0, 0.5, 1.0], y_ticks=[0.0, 0.5, 1.0])
    chart.text((60.3, 40.7), "7.00 GiB", anchor="lm")
    chart.text((300, 150), "7.00 GiB", anchor="rd")
    chart.text((120, 100), "7.00 GiB", bold=True)
    pixels = pixels_of(chart.image)

    assert len(find_text(pixels, "7.00 GiB", font(13))) == 2
    assert len(find_text(pixels, "7.00 GiB", font(13, bold=True))) == 1
    assert _ink(font(13, bold=True), "7.00 GiB") > 1.2 * _ink(font(13), "7.00 GiB")


def _ink(face: plot.Font, text: str) -> int:
    stamp = Image.new("RGB", (200, 40), plot.PAPER)
    face.draw(ImageDraw.Draw(stamp), (5, 5), text, fill=(0, 0, 0))
    return int((255 - pixels_of(stamp)).sum())


def test_text_over_a_line_is_not_found():
    chart = Chart((300, 100), box=(10, 10, 290, 90), x=(0.0, 1.0), y=(0.0, 1.0))
    plot.font(13).draw(chart.draw, (40, 40), "HBM 15.75 GiB")
    chart.draw.line([(60, 30), (60, 70)], fill=plot.INK)
    assert find_text(pixels_of(chart.image), "HBM 15.75 GiB", font(13)) == []


def test_every_picture_is_drawn_without_matplotlib(tmp_path):
    """matplotlib is no dependency: in a process where importing it fails, the loss
    curve, a contact sheet and both harness-fit charts are drawn."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["matplotlib"] = None  # any import of matplotlib now raises ImportError
        from pathlib import Path
        from harness.fit.chart import write_chart, write_cost_chart
        from harness.outputs.loss_curve import save_loss_curve
        from harness.outputs.pictures import save_contact_sheet
        from tests.support.fit_reports import comparison, memory_report, target_row
        from tests.test_pictures import make_entries

        out = Path({str(tmp_path)!r})
        save_loss_curve([{{"step": s, "loss": 1 / (1 + s)}} for s in range(10)], out / "loss_curve.png",
                        hard_example_steps=[5])
        save_contact_sheet(make_entries(3), out / "sheet.png", step=5)
        write_chart(memory_report(True), out / "fit_memory.png")
        write_chart(memory_report(False), out / "fit_memory_oom.png")
        write_cost_chart(comparison([target_row("v6e-8", seconds=1.0, usd=2.0, batch_size=64, requested=64)], 64),
                         out / "fit_targets.png")
        print(sorted(name for name, module in sys.modules.items() if "matplotlib" in name and module is not None))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=harness_env(JAX_PLATFORMS="cpu"),
                            capture_output=True, text=True, timeout=240)

    assert result.returncode == 0, failure_report(result)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    sizes = {}
    for name in ("loss_curve", "sheet", "fit_memory", "fit_memory_oom", "fit_targets"):
        with Image.open(tmp_path / f"{name}.png") as png:
            sizes[name] = (png.format, png.size)
    assert sizes["loss_curve"] == ("PNG", (1000, 500))
    assert sizes["fit_memory"] == sizes["fit_memory_oom"] == ("PNG", (1320, 504))
    assert sizes["fit_targets"] == ("PNG", (960, 600))
    assert sizes["sheet"][0] == "PNG"
