"""Contact sheets and loss curves: sizes, layout, and pixels where they can be checked.

    .venv/bin/python -m pytest -q tests/test_pictures.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from harness.config import DataConfig
from harness.mock.data import MockDataset, camera_names
from harness.hard_examples.entry import HardExample
from harness.outputs.loss_curve import LINES, MARK_COLOR, nice_ticks, read_curve_axes, save_loss_curve
from harness.outputs.pictures import read_contact_sheet_layout, render_contact_sheet, save_contact_sheet


def make_entries(count: int, *, image_size: int = 64, num_cameras: int = 2) -> list[HardExample]:
    """Entries with mock-data images (cameras side by side), highest loss first."""
    spec = DataConfig(batch_size=max(count, 1), image_size=image_size, num_cameras=num_cameras)
    batch = MockDataset(spec, seed=0).batch_at(0)
    side_by_side = np.concatenate([batch.images[name] for name in camera_names(spec)], axis=2)
    actions = ["move right 10cm and move forward 5cm and move up 3cm", "move left 2cm"]
    return [
        HardExample(sample_id=int(batch.sample_id[i]), loss=9.0 - 0.5 * i, step=100 + i, host=i % 3,
                    lang_action=actions[i % 2], prompt="pick up the red cup and put it in the sink slowly",
                    token_len=20, image=side_by_side[i])
        for i in range(count)
    ]


def test_sheet_layout_follows_the_entries_order_row_by_row():
    entries = make_entries(7)
    sheet = render_contact_sheet(entries, step=120, threshold=5.5, columns=3)
    pixels = np.asarray(sheet.image)

    assert [c.sample_id for c in sheet.cells] == [e.sample_id for e in entries]
    assert [c.rank for c in sheet.cells] == list(range(1, 8))
    lefts = sorted({c.box[0] for c in sheet.cells})
    tops = sorted({c.box[1] for c in sheet.cells})
    assert len(lefts) == 3 and len(tops) == 3
    for index, cell in enumerate(sheet.cells):
        row, column = divmod(index, 3)
        assert (cell.box[0], cell.box[1]) == (lefts[column], tops[row])
        left, top, right, bottom = cell.box
        # 64x128 images are enlarged 2x with NEAREST: every pixel becomes a 2x2 square.
        assert (right - left, bottom - top) == (256, 128)
        enlarged = entries[index].image.repeat(2, axis=0).repeat(2, axis=1)
        np.testing.assert_array_equal(pixels[top:bottom, left:right], enlarged)
        caption = pixels[bottom + 4 : bottom + 60, left:right]
        assert (caption < 100).any(), "caption text missing under the thumbnail"
    right_edge = max(c.box[2] for c in sheet.cells)
    assert sheet.image.width - right_edge < 40


def test_saved_sheet_carries_its_layout(tmp_path):
    entries = make_entries(4)
    path = tmp_path / "sheets" / "hard_examples_000120.png"
    sheet = save_contact_sheet(entries, path, step=120, threshold=None)
    written = [{"sample_id": e.sample_id, "loss": e.loss, "host": e.host} for e in entries]
    path.with_suffix(".json").write_text(json.dumps(written))

    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.size == sheet.image.size
    layout = read_contact_sheet_layout(path)
    assert layout == sheet.cells
    listed = json.loads(path.with_suffix(".json").read_text())
    assert [{"sample_id": c.sample_id, "loss": c.loss, "host": c.host} for c in layout] == listed


def test_empty_sheet_says_so(tmp_path):
    sheet = save_contact_sheet([], tmp_path / "empty.png", step=3)
    assert sheet.cells == []
    assert sheet.image.width <= 800 and sheet.image.height <= 160
    assert read_contact_sheet_layout(tmp_path / "empty.png") == []
    assert (np.asarray(sheet.image) < 100).any()


def test_large_images_shrink_without_distortion_and_wrap_to_fewer_columns():
    entries = make_entries(6, image_size=224, num_cameras=4)  # 224 x 896 each
    sheet = render_contact_sheet(entries, step=0)
    for cell in sheet.cells:
        width, height = cell.box[2] - cell.box[0], cell.box[3] - cell.box[1]
        assert width == 512 and height == 128  # 896:224 kept
    assert sheet.image.width <= 2000
    assert len({c.box[0] for c in sheet.cells}) == 3


def test_explicit_scale_and_bad_images():
    entries = make_entries(2)
    sheet = render_contact_sheet(entries, step=0, thumb_scale=3)
    assert {(c.box[2] - c.box[0], c.box[3] - c.box[1]) for c in sheet.cells} == {(384, 192)}
    gray = HardExample(sample_id=1, loss=1.0, step=0, host=0, lang_action="", prompt="",
                       token_len=0, image=np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="sample 1"):
        render_contact_sheet([gray], step=0)


def test_loss_curve_is_1000_by_500(tmp_path):
    rows = [{"step": s, "loss": 3.0 / (1 + s), "max_per_sample_loss": 9.0 / (1 + s) + 1} for s in range(0, 200, 10)]
    rows.append({"step": 200, "grad_norm": 1.0})
    save_loss_curve(rows, tmp_path / "loss.png", hard_example_steps=[50, 100, 150])
    save_loss_curve([], tmp_path / "empty.png", hard_example_steps=[])
    for name in ("loss.png", "empty.png"):
        with Image.open(tmp_path / name) as picture:
            assert (picture.format, picture.size) == ("PNG", (1000, 500))


def _near(pixel, color, tolerance=60) -> bool:
    return sum(abs(a - b) for a, b in zip(pixel, color)) <= tolerance


def test_loss_curve_draws_each_logged_point_where_its_axes_say(tmp_path):
    rows = [{"step": s, "loss": 3.0 / (1 + s), "max_per_sample_loss": 9.0 / (1 + s) + 1} for s in range(0, 200, 10)]
    save_loss_curve(rows, tmp_path / "loss.png", hard_example_steps=[50, 150])
    axes = read_curve_axes(tmp_path / "loss.png")
    left, top, right, bottom = axes.box

    with Image.open(tmp_path / "loss.png") as picture:
        image = picture.convert("RGB")
    for key, _, color in LINES:
        for row in rows:
            # The axes' own mapping, computed here from the stored ranges and box.
            x = left + (row["step"] - axes.steps[0]) / (axes.steps[1] - axes.steps[0]) * (right - left)
            y = bottom - (row[key] - axes.losses[0]) / (axes.losses[1] - axes.losses[0]) * (bottom - top)
            window = [image.getpixel((round(x) + dx, round(y) + dy)) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
            assert any(_near(p, color) for p in window), (key, row["step"])
    assert axes.steps == (0.0, 190.0) and axes.losses[0] <= 3.0 / 191 and axes.losses[1] >= 10.0
    for step in (50, 150):  # a dashed gray line from top to bottom
        x = round(left + (step - axes.steps[0]) / (axes.steps[1] - axes.steps[0]) * (right - left))
        marked = sum(any(_near(image.getpixel((x + dx, y)), MARK_COLOR, 30) for dx in (-1, 0, 1))
                     for y in range(top + 1, bottom))
        assert marked > (bottom - top) // 3


def test_an_empty_loss_curve_draws_no_line():
    from harness.outputs.loss_curve import render_loss_curve

    image, _ = render_loss_curve([{"step": 3, "grad_norm": 1.0}], hard_example_steps=[])
    colors = {color for _, _, color in LINES}
    assert not any(_near(p, c, 30) for p in image.get_flattened_data() for c in colors)


@pytest.mark.parametrize("low, high, expected", [
    (0.0, 10.0, [0, 2, 4, 6, 8, 10]),
    (0.13, 0.97, [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]),
    (-3.0, 47.0, [-10, 0, 10, 20, 30, 40, 50]),
])
def test_nice_ticks_cover_the_range_in_round_steps(low, high, expected):
    ticks = nice_ticks(low, high)
    assert ticks == pytest.approx(expected)
    assert ticks[0] <= low and ticks[-1] >= high
