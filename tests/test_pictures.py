"""Contact sheets and loss curves, read by what they show: frames, colours and lines found
in the pixels (tests/support/picture_reading.py), compared with thumbnails resized by
numpy and with the logged numbers; nothing is read back from the drawing code.

    .venv/bin/python -m pytest -q tests/test_pictures.py
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from PIL import Image

from harness.config import DataConfig
from harness.hard_examples.entry import HardExample
from harness.mock.data import MockDataset, camera_names
from harness.outputs.loss_curve import LINES, MARK_COLOR, render_loss_curve, save_loss_curve
from harness.outputs.pictures import render_contact_sheet, save_contact_sheet
from harness.outputs.plot import font
from tests.support.picture_reading import (PAPER, area_downscale, color_mask, find_text, framed_boxes,
                                           largest_component, long_lines, nearest_upscale, pixels_of)


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


def _has_text(pixels: np.ndarray) -> bool:
    return bool((pixels < 100).all(axis=2).any())


def test_sheet_shows_the_entries_row_by_row_each_with_a_caption():
    entries = make_entries(7)  # 64 x 128 images
    pixels = pixels_of(render_contact_sheet(entries, step=120, threshold=5.5, columns=3))
    boxes = framed_boxes(pixels)

    assert len(boxes) == 7
    lefts, tops = sorted({b[0] for b in boxes}), sorted({b[1] for b in boxes})
    assert len(lefts) == 3 and len(tops) == 3
    assert [sum(b[1] == top for b in boxes) for top in tops] == [3, 3, 1]
    assert pixels.shape[1] - max(b[2] for b in boxes) < 40
    for index, (entry, (left, top, right, bottom)) in enumerate(zip(entries, boxes)):
        row, column = divmod(index, 3)
        assert (left, top) == (lefts[column], tops[row])
        # Shorter than 128 pixels: enlarged by the smallest integer factor reaching 128 (2).
        np.testing.assert_array_equal(pixels[top:bottom, left:right], nearest_upscale(entry.image, 2))
        assert _has_text(pixels[bottom + 1: bottom + 60, left:right]), f"no caption under tile {index}"
    assert not (pixels[boxes[0][1]:boxes[0][3], boxes[0][2] + 1:boxes[1][0] - 1] != PAPER).any()


def test_a_saved_sheet_is_the_rendered_one_and_carries_no_metadata(tmp_path):
    entries = make_entries(4)
    path = tmp_path / "sheets" / "step_120.png"
    image = save_contact_sheet(entries, path, step=120, threshold=None)
    with Image.open(path) as saved:
        assert saved.format == "PNG" and not saved.text
        np.testing.assert_array_equal(pixels_of(saved), pixels_of(image))
    assert len(framed_boxes(pixels_of(image))) == 4


def test_empty_sheet_says_so(tmp_path):
    image = save_contact_sheet([], tmp_path / "empty.png", step=3)
    pixels = pixels_of(image)
    assert framed_boxes(pixels) == []
    assert image.width <= 800 and image.height <= 160
    assert _has_text(pixels)


def test_large_images_shrink_without_distortion_and_wrap_to_fewer_columns():
    entries = make_entries(6, image_size=224, num_cameras=4)  # 224 x 896 each
    pixels = pixels_of(render_contact_sheet(entries, step=0))
    boxes = framed_boxes(pixels)
    assert len(boxes) == 6 and pixels.shape[1] <= 2000
    assert len({b[0] for b in boxes}) == 3
    expected = [area_downscale(entry.image, 128, 512) for entry in entries]  # at most 512 wide, 896:224 kept
    for index, (left, top, right, bottom) in enumerate(boxes):
        tile = pixels[top:bottom, left:right]
        assert tile.shape == (128, 512, 3)
        distances = [np.abs(tile - oracle).mean() for oracle in expected]
        assert distances[index] < 2.0, distances  # resampling filters differ a little (0.2 to 0.5 here)
        assert np.argmin(distances) == index, distances


def test_explicit_scale_and_bad_images():
    entries = make_entries(2)
    pixels = pixels_of(render_contact_sheet(entries, step=0, thumb_scale=3))
    boxes = framed_boxes(pixels)
    assert [(r - l, b - t) for l, t, r, b in boxes] == [(384, 192)] * 2
    for entry, (left, top, right, bottom) in zip(entries, boxes):
        np.testing.assert_array_equal(pixels[top:bottom, left:right], nearest_upscale(entry.image, 3))
    gray = HardExample(sample_id=1, loss=1.0, step=0, host=0, lang_action="", prompt="",
                       token_len=0, image=np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="sample 1"):
        render_contact_sheet([gray], step=0)


# Losses that go up and down, logged at steps 20..180; marks at 0 and 200 widen the step
# axis past them, so the curves' ends lie inside the plot area.
WAVE = [{"step": s, "loss": 2 + 1.5 * math.sin(s / 17),
         "max_per_sample_loss": 3.2 + 1.5 * math.sin(s / 17) + 0.5 * math.cos(s / 23)} for s in range(20, 190, 10)]
MARKS = [0, 50, 120, 200]


def test_loss_curve_is_a_1000_by_500_png_without_metadata(tmp_path):
    rows = [{"step": s, "loss": 3.0 / (1 + s), "max_per_sample_loss": 9.0 / (1 + s) + 1} for s in range(0, 200, 10)]
    rows.append({"step": 200, "grad_norm": 1.0})
    save_loss_curve(rows, tmp_path / "loss.png", hard_example_steps=[50, 100, 150])
    save_loss_curve([], tmp_path / "empty.png", hard_example_steps=[])
    for name in ("loss.png", "empty.png"):
        with Image.open(tmp_path / name) as picture:
            assert (picture.format, picture.size, picture.text) == ("PNG", (1000, 500), {})


def test_loss_curve_draws_each_logged_point_where_it_belongs():
    pixels = pixels_of(render_loss_curve(WAVE, hard_example_steps=MARKS))
    (top, bottom), (left, right) = long_lines((pixels < 60).all(axis=2))  # the plot area's dark frame
    # The step axis, from the two dashed marks inside the plot area (0 and 200 lie on its edges).
    dashes = color_mask(pixels, MARK_COLOR, 30)[top + 1:bottom].sum(axis=0)
    x50, x120 = np.nonzero(dashes > (bottom - top) // 3)[0]

    def x_of(step: float) -> float:
        return x50 + (step - 50) * (x120 - x50) / 70

    assert abs(x_of(0) - left) <= 1.5 and abs(x_of(200) - right) <= 1.5
    for key, _, color in LINES:
        ys, xs = np.nonzero(largest_component(color_mask(pixels, color, 30)))
        assert abs(xs.min() - x_of(WAVE[0]["step"])) <= 2 and abs(xs.max() - x_of(WAVE[-1]["step"])) <= 2, key
        losses = np.array([row[key] for row in WAVE])
        heights = []
        for row in WAVE:
            column = ys[np.abs(xs - x_of(row["step"])) <= 1]  # the marks place x to half a pixel
            assert column.size, (key, row["step"])
            heights.append(float(np.median(column)))
        heights = np.array(heights)
        for i, j in itertools.permutations(range(len(WAVE)), 2):
            if losses[i] > losses[j] + 0.1:  # about 8 pixels apart
                assert heights[i] < heights[j], (key, WAVE[i]["step"], WAVE[j]["step"])
        slope, intercept = np.polyfit(losses, heights, 1)  # a linear loss axis
        off = np.abs(heights - (slope * losses + intercept))
        assert off.max() <= 2.5, (key, [WAVE[i]["step"] for i in np.nonzero(off > 2.5)[0]], off.round(1))


def test_an_empty_loss_curve_draws_no_line():
    pixels = pixels_of(render_loss_curve([{"step": 3, "grad_norm": 1.0}], hard_example_steps=[]))
    assert not any(color_mask(pixels, color, 30).any() for _, _, color in LINES)


def test_loss_curve_labels_its_lines_and_axes():
    pixels = pixels_of(render_loss_curve(WAVE, hard_example_steps=MARKS))
    (top, bottom), (left, right) = long_lines((pixels < 60).all(axis=2))
    legend = {}
    for label in ("mean loss", "max per-sample loss", "hard examples collected"):
        [legend[label]] = find_text(pixels, label, font(13))
        assert left < legend[label][0] < right and top < legend[label][1] < bottom, label
    assert legend["mean loss"][1] < legend["max per-sample loss"][1] < legend["hard examples collected"][1]
    for (_, label, color), y in zip(LINES, (legend["mean loss"][1], legend["max per-sample loss"][1])):
        sample = color_mask(pixels, color, 30)[y - 2:y + 12, legend[label][0] - 45:legend[label][0]]
        assert sample.sum() >= 30, label  # a short line of its colour before it
    [(_, title_y)] = find_text(pixels, "Training loss", font(18, bold=True))
    [(_, x_label_y)] = find_text(pixels, "training step", font(13))
    assert title_y < top and x_label_y > bottom
    assert len(find_text(np.ascontiguousarray(np.rot90(pixels, k=-1)), "loss", font(13))) == 1
