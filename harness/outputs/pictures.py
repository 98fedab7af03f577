"""Pictures of hard examples for people: a contact sheet (the loss curve is loss_curve.py).

Pure functions of their inputs (no wandb, no JAX); the run's writer renders a sheet
once and hands the same image to the PNG file and to wandb. A contact sheet puts the
hard examples in the order given (highest loss first), row by row, one framed
thumbnail per cell, captioned with rank, loss, host, step, the language action and the
prompt:

    image = save_contact_sheet(entries, run_dir / "hard_examples" / "step_100.png", step=100)
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from harness.hard_examples.entry import HardExample

_MIN_THUMB_HEIGHT = 128     # small images are upscaled by an integer factor to at least this
_MAX_THUMB_WIDTH = 512      # wide, large images are downscaled to at most this
_MAX_SHEET_WIDTH = 2000     # wide thumbnails get fewer columns
_PAD = 12                   # between cells, and around the sheet
_GAP = 6                    # between a thumbnail and its caption
_TEXT_SIZE = 14
_TITLE_SIZE = 20
_MAX_ACTION_LINES = 3
_MAX_PROMPT_LINES = 2
_INK = (20, 20, 20)
_MUTED = (105, 105, 105)
_BORDER = (170, 170, 170)
_PAPER = (255, 255, 255)


@functools.cache
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which ships inside matplotlib's package data, so it exists wherever
    the harness is installed; found without importing matplotlib (about 0.4 s)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib (a dependency, for its DejaVu Sans fonts) is not installed")
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf", name), size)


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + 2


def _fit(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """`text`, cut and ended with '…' if it is wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; the last line ends in '…' if text was cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    return [_fit(line, font, width) for line in lines]


def _thumb_scale(height: int, width: int) -> float:
    if height < _MIN_THUMB_HEIGHT:
        return float(math.ceil(_MIN_THUMB_HEIGHT / height))
    return min(1.0, _MAX_THUMB_WIDTH / width)


def _thumbnail(image: np.ndarray, scale: float) -> Image.Image:
    """Scaled without distortion: the same factor on both axes; integer upscales use
    NEAREST so pixels stay crisp, other factors use LANCZOS."""
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if scale == 1.0:
        return picture
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    integer_upscale = scale > 1.0 and scale == int(scale)
    return picture.resize(size, Image.Resampling.NEAREST if integer_upscale else Image.Resampling.LANCZOS)


def _title(step: int, count: int, threshold: float | None) -> str:
    noun = "entry" if count == 1 else "entries"
    kept = f"loss threshold {threshold:.4f}" if threshold is not None else "no loss threshold yet"
    return f"Hard examples at step {step}: {count} {noun}, {kept}"


def render_contact_sheet(
    entries: Sequence[HardExample],
    *,
    step: int,
    threshold: float | None = None,
    columns: int = 5,
    thumb_scale: float | None = None,
) -> Image.Image:
    """A grid of `entries` in the given order (rank 1 first), read row by row, with at
    most `columns` columns (fewer if the sheet would be wider than 2000 pixels).

    `thumb_scale` multiplies both image axes; by default small images are enlarged by
    the smallest integer factor that makes them at least 128 pixels tall, and large
    ones shrunk to at most 512 pixels wide.
    """
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    title_font, bold, regular = font(_TITLE_SIZE, bold=True), font(_TEXT_SIZE, bold=True), font(_TEXT_SIZE)
    title = _title(step, len(entries), threshold)
    title_height = _line_height(title_font)
    title_width = math.ceil(title_font.getlength(title))

    if not entries:
        message = "no hard examples"
        width = max(title_width, 360) + 2 * _PAD
        sheet = Image.new("RGB", (width, 2 * _PAD + title_height + 3 * _line_height(regular)), _PAPER)
        draw = ImageDraw.Draw(sheet)
        draw.text((_PAD, _PAD), title, font=title_font, fill=_INK)
        draw.text((width // 2, _PAD + title_height + 2 * _line_height(regular)), message,
                  font=regular, fill=_MUTED, anchor="ms")
        return sheet

    thumbs = []
    for entry in entries:
        image = np.asarray(entry.image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"sample {entry.sample_id}: image must be (h, w, 3), got {image.shape}")
        scale = thumb_scale if thumb_scale is not None else _thumb_scale(*image.shape[:2])
        thumbs.append(_thumbnail(image, scale))
    cell_width = max(max(t.width for t in thumbs), 220)
    thumb_height = max(t.height for t in thumbs)

    captions = []
    for rank, entry in enumerate(entries, start=1):
        captions.append((
            _fit(f"#{rank}   loss {entry.loss:.4f}", bold, cell_width),
            _fit(f"host {entry.host} · step {entry.step} · id {entry.sample_id}", regular, cell_width),
            _wrap(entry.lang_action, bold, cell_width, _MAX_ACTION_LINES),
            _wrap(entry.prompt, regular, cell_width, _MAX_PROMPT_LINES),
        ))
    line = _line_height(regular)
    action_lines = max(len(c[2]) for c in captions)
    prompt_lines = max(len(c[3]) for c in captions)
    caption_height = (2 + action_lines + prompt_lines) * line + line // 2
    cell_height = thumb_height + _GAP + caption_height

    columns = max(1, min(columns, len(entries), (_MAX_SHEET_WIDTH - _PAD) // (cell_width + _PAD)))
    rows = math.ceil(len(entries) / columns)
    grid_top = _PAD + title_height + _PAD
    width = max(columns * cell_width + (columns + 1) * _PAD, title_width + 2 * _PAD)
    height = grid_top + rows * cell_height + rows * _PAD
    sheet = Image.new("RGB", (width, height), _PAPER)
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, _PAD), title, font=title_font, fill=_INK)

    for index, (thumb, caption) in enumerate(zip(thumbs, captions)):
        row, column = divmod(index, columns)
        left = _PAD + column * (cell_width + _PAD)
        top = grid_top + row * (cell_height + _PAD)
        sheet.paste(thumb, (left, top))
        draw.rectangle((left - 1, top - 1, left + thumb.width, top + thumb.height), outline=_BORDER)  # a 1-pixel frame
        headline, details, action, prompt = caption
        y = top + thumb_height + _GAP
        draw.text((left, y), headline, font=bold, fill=_INK)
        draw.text((left, y + line), details, font=regular, fill=_MUTED)
        y += 2 * line + line // 4
        for text in action:
            draw.text((left, y), text, font=bold, fill=_INK)
            y += line
        y = top + thumb_height + _GAP + (2 + action_lines) * line + line // 2
        for text in prompt:
            draw.text((left, y), text, font=regular, fill=_MUTED)
            y += line
    return sheet


def save_contact_sheet(
    entries: Sequence[HardExample],
    path: str | os.PathLike,
    *,
    step: int,
    threshold: float | None = None,
    columns: int = 5,
) -> Image.Image:
    """Render and write a PNG; returns the image, for wandb."""
    sheet = render_contact_sheet(entries, step=step, threshold=threshold, columns=columns)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", compress_level=1)  # fast; sheets are mostly photos
    return sheet
