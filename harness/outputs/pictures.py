"""Pictures of hard examples for people: a contact sheet (the loss curve is loss_curve.py).

Pure functions of their inputs (no wandb, no JAX); the run's writer renders a sheet
once and hands the same image to the PNG file and to wandb. A contact sheet puts the
hard examples in the order given (highest loss first), row by row, one framed
thumbnail per cell, captioned with rank, loss, host, step, the language action and the
prompt:

    image = save_contact_sheet(entries, run_dir / "hard_examples" / "step_100.png", step=100)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness.hard_examples.entry import HardExample
from harness.outputs.plot import Font, fit_text, font

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


def _wrap(text: str, font: Font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; the last line ends in '…' if text was cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.length(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    return [fit_text(line, font, width) for line in lines]


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
    title_height = title_font.line_height
    title_width = title_font.length(title)

    if not entries:
        message = "no hard examples"
        width = max(title_width, 360) + 2 * _PAD
        sheet = Image.new("RGB", (width, 2 * _PAD + title_height + 3 * regular.line_height), _PAPER)
        draw = ImageDraw.Draw(sheet)
        title_font.draw(draw, (_PAD, _PAD), title, fill=_INK)
        regular.draw(draw, (width // 2, _PAD + title_height + 2 * regular.line_height), message, fill=_MUTED,
                     anchor="ms")
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
            fit_text(f"#{rank}   loss {entry.loss:.4f}", bold, cell_width),
            fit_text(f"host {entry.host} · step {entry.step} · id {entry.sample_id}", regular, cell_width),
            _wrap(entry.lang_action, bold, cell_width, _MAX_ACTION_LINES),
            _wrap(entry.prompt, regular, cell_width, _MAX_PROMPT_LINES),
        ))
    line = regular.line_height
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
    title_font.draw(draw, (_PAD, _PAD), title, fill=_INK)

    for index, (thumb, caption) in enumerate(zip(thumbs, captions)):
        row, column = divmod(index, columns)
        left = _PAD + column * (cell_width + _PAD)
        top = grid_top + row * (cell_height + _PAD)
        sheet.paste(thumb, (left, top))
        draw.rectangle((left - 1, top - 1, left + thumb.width, top + thumb.height), outline=_BORDER)  # a 1-pixel frame
        headline, details, action, prompt = caption
        y = top + thumb_height + _GAP
        bold.draw(draw, (left, y), headline, fill=_INK)
        regular.draw(draw, (left, y + line), details, fill=_MUTED)
        y += 2 * line + line // 4
        for text in action:
            bold.draw(draw, (left, y), text, fill=_INK)
            y += line
        y = top + thumb_height + _GAP + (2 + action_lines) * line + line // 2
        for text in prompt:
            regular.draw(draw, (left, y), text, fill=_MUTED)
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
