"""Reading the harness's pictures by what they show: frames, colours, lines and text found
in the pixels, and independent numpy resizers to compare thumbnails with. Nothing here
asks the drawing code where it put anything (text is looked for by drawing the expected
string with the harness's font on a blank stamp)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), as numpy slices them

THUMBNAIL_FRAME = (170, 170, 170)  # the 1-pixel gray frame around each contact-sheet thumbnail
PAPER = (255, 255, 255)


def pixels_of(image) -> np.ndarray:
    """An (h, w, 3) int array, so colour differences do not wrap around."""
    return np.asarray(image.convert("RGB"), dtype=np.int32)


def color_mask(pixels: np.ndarray, color: Sequence[int], tolerance: int = 0) -> np.ndarray:
    """Where `pixels` is `color`, to within `tolerance` summed over the channels."""
    return np.abs(pixels - np.asarray(color)).sum(axis=2) <= tolerance


def framed_boxes(pixels: np.ndarray, color: Sequence[int] = THUMBNAIL_FRAME, min_side: int = 8) -> list[Box]:
    """The insides of every complete 1-pixel rectangle of `color`, row by row (top, then
    left). A frame's top-left corner is a `color` pixel with `color` to its right and
    below, and none diagonally inside; it counts only if all four sides are whole."""
    mask = color_mask(pixels, color)
    corners = mask[:-1, :-1] & mask[:-1, 1:] & mask[1:, :-1] & ~mask[1:, 1:]
    boxes = []
    for y, x in zip(*np.nonzero(corners)):
        right = x + int(np.argmin(mask[y, x:])) - 1 if not mask[y, x:].all() else mask.shape[1] - 1
        bottom = y + int(np.argmin(mask[y:, x])) - 1 if not mask[y:, x].all() else mask.shape[0] - 1
        if right - x - 1 < min_side or bottom - y - 1 < min_side:
            continue
        if mask[bottom, x:right + 1].all() and mask[y:bottom + 1, right].all():
            boxes.append((int(x) + 1, int(y) + 1, int(right), int(bottom)))
    return sorted(boxes, key=lambda box: (box[1], box[0]))


def nearest_upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Every pixel as a `factor` x `factor` square."""
    return np.asarray(image).repeat(factor, axis=0).repeat(factor, axis=1)


def _area_weights(source: int, target: int) -> np.ndarray:
    """(target, source): how much of each source pixel falls in each target pixel."""
    scale = source / target
    starts = np.arange(target)[:, None] * scale
    edges = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(starts + scale, edges + 1) - np.maximum(starts, edges), 0, None)
    return overlap / scale


def area_downscale(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` shrunk to (height, width) by averaging the area each new pixel covers."""
    rows, columns = _area_weights(image.shape[0], height), _area_weights(image.shape[1], width)
    tall = np.tensordot(rows, np.asarray(image, dtype=np.float64), axes=(1, 0))  # (height, w, 3)
    return np.tensordot(tall, columns, axes=(1, 1)).transpose(0, 2, 1)


def long_lines(mask: np.ndarray, fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The rows and the columns of which more than `fraction` is set in `mask`."""
    return np.nonzero(mask.mean(axis=1) > fraction)[0], np.nonzero(mask.mean(axis=0) > fraction)[0]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of `mask`, as a mask."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def find_text(pixels: np.ndarray, text: str, face, color: Sequence[int] = (20, 20, 20)) -> list[tuple[int, int]]:
    """The top-left corners of every place where `text`, drawn in `color` on paper with
    `face` (a harness.outputs.plot.Font), appears pixel for pixel, in reading order.
    Text that something else was drawn over, or that was cut off, is not found."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = face.box((0, 0), text)
    stamp = Image.new("RGB", (right - left + 8, bottom - top + 8), PAPER)
    face.draw(ImageDraw.Draw(stamp), (4, 4), text, fill=tuple(color))
    patch = pixels_of(stamp)
    ink = (patch != PAPER).any(axis=2)
    rows, columns = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    patch = patch[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    height, width = patch.shape[:2]
    first = int(np.argmax((patch[0] != PAPER).any(axis=1)))  # the first ink pixel of the top row
    hits = []
    for y, x in np.argwhere((pixels == patch[0, first]).all(axis=2)):  # candidates for that pixel
        x0 = x - first
        inside = x0 >= 0 and y + height <= pixels.shape[0] and x0 + width <= pixels.shape[1]
        if inside and np.array_equal(pixels[y:y + height, x0:x0 + width], patch):
            hits.append((int(x0), int(y)))
    return hits
