"""One host's hardest samples: a top-K buffer by per-sample loss, plus interval stats.

Pure numpy and PIL: no JAX, no collectives, no logging. The training loop calls
`update` every step (cheap: a vectorized selection and a copy of the few rows that
enter the buffer); at each hard-example interval it sends `candidates()` and `stats()`
to the cross-host merge, calls `materialize(winners)` for this host's winners (the only
place images are resized and tokens decoded), and then `reset()`. The buffer must not
change between `candidates()` and `materialize()`, so no `update` in between.

Tests: `.venv/bin/python -m pytest -q tests/test_tracker.py`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Sequence

import numpy as np
from PIL import Image

from harness.mock.data import Batch
from harness.hard_examples.entry import Candidate, HardExample, IntervalStats
from harness.mock.tokenizer import SEP, MockTokenizer

# Thumbnails are made once per interval for at most K samples, so speed hardly matters:
# LANCZOS takes ~0.2 ms per 128x128 camera and ~0.5 ms per 224x224 one (2-3x BILINEAR,
# ~50 ms for K=50 with two 224 cameras). It is the sharpest of PIL's antialiased
# downsampling filters, which keeps small objects and occlusion edges readable at 64 px.
RESAMPLE = Image.Resampling.LANCZOS


@dataclasses.dataclass(slots=True)
class _Held:
    """A buffered sample: its raw rows, copied out of the batch, not yet resized or decoded."""

    sample_id: int
    loss: float
    step: int
    images: tuple[np.ndarray, ...]  # one (H, W, 3) uint8 per camera, in batch order
    tokens: np.ndarray
    langact_mask: np.ndarray


class HardExampleTracker:
    """Keeps this host's `max_hard_examples` highest-loss samples of the current interval.

    Order is loss descending, ties by sample_id ascending; a sample seen again keeps its
    higher loss. Masked samples are ignored; NaN/inf losses are counted, never buffered.
    `resize_hw` is the (height, width) of each camera's thumbnail; losses strictly above
    `high_loss_threshold` count as high-loss in the stats. The cameras (names and order)
    must stay the same for the tracker's whole life.
    """

    def __init__(
        self,
        max_hard_examples: int,
        tokenizer: MockTokenizer,
        *,
        host: int = 0,
        resize_hw: tuple[int, int] = (64, 64),
        high_loss_threshold: float = 4.0,
    ):
        if max_hard_examples < 1:
            raise ValueError(f"max_hard_examples must be at least 1, got {max_hard_examples}")
        if host < 0:
            raise ValueError(f"host must be non-negative, got {host}")
        if len(resize_hw) != 2 or min(resize_hw) < 1:
            raise ValueError(f"resize_hw must be two positive sizes (height, width), got {resize_hw}")
        if not math.isfinite(high_loss_threshold):
            raise ValueError(f"high_loss_threshold must be finite, got {high_loss_threshold}")
        self.max_hard_examples = int(max_hard_examples)
        self.tokenizer = tokenizer
        self.host = int(host)
        self.resize_hw = (int(resize_hw[0]), int(resize_hw[1]))
        self.high_loss_threshold = float(high_loss_threshold)
        self._camera_names: tuple[str, ...] | None = None
        self.reset()

    def reset(self) -> None:
        """Starts a new interval: empty buffer, zeroed stats."""
        self._held: list[_Held] = []  # sorted by (-loss, sample_id)
        self._by_id: dict[int, _Held] = {}
        self._first_step: int | None = None
        self._last_step: int | None = None
        self._num_samples = 0
        self._num_nonfinite = 0
        self._num_high_loss = 0
        self._loss_sum = 0.0
        self._loss_max: float | None = None
        self._loss_min: float | None = None

    def update(self, step: int, batch: Batch, per_sample_losses: np.ndarray, sample_ids: np.ndarray) -> None:
        """Folds one step into the stats and the buffer.

        `per_sample_losses[i]` belongs to the batch row whose `sample_id` is
        `sample_ids[i]`; rows may come back from the device in any order, but every
        batch row must come back exactly once (else ValueError, and nothing changes).
        """
        losses = np.asarray(per_sample_losses, dtype=np.float64)
        ids = np.asarray(sample_ids)
        rows = self._rows_of(batch, losses, ids)
        self._check_images(batch)
        step = int(step)
        self._first_step = step if self._first_step is None else min(self._first_step, step)
        self._last_step = step if self._last_step is None else max(self._last_step, step)

        valid = np.asarray(batch.sample_mask, dtype=bool)[rows]
        losses, rows, ids = losses[valid], rows[valid], ids[valid].astype(np.int64)
        finite = np.isfinite(losses)
        self._num_samples += int(losses.size)
        self._num_nonfinite += int(losses.size - np.count_nonzero(finite))
        losses, rows, ids = losses[finite], rows[finite], ids[finite]
        if losses.size == 0:
            return
        self._loss_sum += float(losses.sum())
        top, bottom = float(losses.max()), float(losses.min())
        self._loss_max = top if self._loss_max is None else max(self._loss_max, top)
        self._loss_min = bottom if self._loss_min is None else min(self._loss_min, bottom)
        self._num_high_loss += int(np.count_nonzero(losses > self.high_loss_threshold))

        if len(self._held) == self.max_hard_examples:
            worst = self._held[-1]
            beats = (losses > worst.loss) | ((losses == worst.loss) & (ids < worst.sample_id))
            losses, rows, ids = losses[beats], rows[beats], ids[beats]
        chosen = _top_k(losses, ids, self.max_hard_examples)
        self._admit(step, batch, losses[chosen].tolist(), rows[chosen].tolist(), ids[chosen].tolist())

    def candidates(self) -> list[Candidate]:
        """The buffer as metadata, loss descending (ties: sample_id ascending)."""
        return [Candidate(h.sample_id, h.loss, h.step, self.host) for h in self._held]

    def stats(self) -> IntervalStats:
        return IntervalStats(
            host=self.host,
            first_step=self._first_step,
            last_step=self._last_step,
            num_samples=self._num_samples,
            loss_sum=self._loss_sum,
            loss_max=self._loss_max,
            loss_min=self._loss_min,
            num_high_loss=self._num_high_loss,
            num_nonfinite=self._num_nonfinite,
            threshold=self._held[-1].loss if self._held else None,
        )

    def materialize(self, sample_ids: Collection[int] | None = None) -> list[HardExample]:
        """Loggable records for the buffered samples in `sample_ids` (default: all), in
        buffer order. Each camera is resized to `resize_hw` and the cameras are put side
        by side; resizing each camera alone keeps one view from bleeding into the next."""
        if sample_ids is None:
            chosen = self._held
        else:
            wanted = {int(s) for s in sample_ids}
            missing = sorted(wanted - self._by_id.keys())
            if missing:
                raise ValueError(
                    f"sample ids {missing[:10]} are not in host {self.host}'s buffer "
                    f"({len(missing)} missing); was update() called after candidates()?"
                )
            chosen = [h for h in self._held if h.sample_id in wanted]
        return [self._example(h) for h in chosen]

    def _example(self, held: _Held) -> HardExample:
        height, width = self.resize_hw
        panels = [
            np.asarray(Image.fromarray(image).resize((width, height), RESAMPLE)) for image in held.images
        ]
        image = np.concatenate(panels, axis=1)
        image.setflags(write=False)
        seps = np.flatnonzero(held.tokens == SEP)
        task_tokens = held.tokens[: seps[0]] if seps.size else held.tokens
        return HardExample(
            sample_id=held.sample_id,
            loss=held.loss,
            step=held.step,
            host=self.host,
            lang_action=self.tokenizer.decode(held.tokens[held.langact_mask]),
            prompt=self.tokenizer.decode(task_tokens),
            token_len=int(np.count_nonzero(held.langact_mask)),
            image=image,
        )

    def _admit(self, step: int, batch: Batch, losses: list[float], rows: list[int], ids: list[int]) -> None:
        """Merges the batch's best rows into the buffer; copies only rows that stay."""
        arrivals = {}
        for loss, row, sample_id in zip(losses, rows, ids):
            held = self._by_id.get(sample_id)
            if held is None or loss > held.loss:
                arrivals[sample_id] = (loss, row)
        if not arrivals:
            return
        ranked = [(h.loss, h.sample_id, h) for h in self._held if h.sample_id not in arrivals]
        ranked += [(loss, sample_id, row) for sample_id, (loss, row) in arrivals.items()]
        ranked.sort(key=lambda e: (-e[0], e[1]))
        del ranked[self.max_hard_examples :]
        self._held = [
            item if isinstance(item, _Held) else self._copy_row(step, batch, item, loss, sample_id)
            for loss, sample_id, item in ranked
        ]
        self._by_id = {h.sample_id: h for h in self._held}

    def restore(self, stats: IntervalStats, candidates: Sequence[Candidate],
                read_records: Callable[[np.ndarray], Batch]) -> None:
        """Rebuilds the interval a checkpoint saved: `stats` as they were, and the
        buffer's raw rows read again from the data source by record key
        (`read_records(sample_ids)`), so a resumed run logs what an uninterrupted one
        would."""
        if stats.host != self.host or any(c.host != self.host for c in candidates):
            raise ValueError(f"tracker state of host {stats.host} given to host {self.host}")
        if len(candidates) > self.max_hard_examples:
            raise ValueError(f"{len(candidates)} saved candidates exceed max_hard_examples={self.max_hard_examples}")
        self.reset()
        held = []
        if candidates:
            batch = read_records(np.asarray([c.sample_id for c in candidates], dtype=np.int64))
            self._check_images(batch)
            row_of = {int(sample_id): row for row, sample_id in enumerate(np.asarray(batch.sample_id))}
            for c in candidates:
                if c.sample_id not in row_of:
                    raise ValueError(f"saved sample id {c.sample_id} is not among the records read back")
                held.append(self._copy_row(c.step, batch, row_of[c.sample_id], c.loss, c.sample_id))
        held.sort(key=lambda h: (-h.loss, h.sample_id))
        self._held, self._by_id = held, {h.sample_id: h for h in held}
        self._first_step, self._last_step = stats.first_step, stats.last_step
        self._num_samples, self._num_nonfinite = stats.num_samples, stats.num_nonfinite
        self._num_high_loss, self._loss_sum = stats.num_high_loss, stats.loss_sum
        self._loss_max, self._loss_min = stats.loss_max, stats.loss_min

    def _copy_row(self, step: int, batch: Batch, row: int, loss: float, sample_id: int) -> _Held:
        return _Held(
            sample_id=sample_id,
            loss=loss,
            step=step,
            images=tuple(np.array(batch.images[name][row]) for name in self._camera_names),
            tokens=np.array(batch.tokenized_prompt[row]),
            langact_mask=np.array(batch.tokenized_langact_mask[row], dtype=bool),
        )

    @staticmethod
    def _rows_of(batch: Batch, losses: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The batch row of each id; the ids must be a permutation of the batch's."""
        batch_ids = np.asarray(batch.sample_id)
        n = batch_ids.shape[0]
        if losses.ndim != 1 or ids.ndim != 1 or not losses.shape[0] == ids.shape[0] == n:
            raise ValueError(
                f"need one loss and one sample id per batch row: {n} rows, losses of shape "
                f"{losses.shape}, sample ids of shape {ids.shape}"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"sample ids must be integers, got dtype {ids.dtype}")
        order = np.argsort(batch_ids, kind="stable")
        sorted_ids = batch_ids[order]
        if n > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
            raise ValueError("the batch's sample ids are not unique, so losses can't be paired by id")
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(n - 1, 0))
        found = sorted_ids[at] == ids if n else np.zeros(0, dtype=bool)
        if not found.all():
            raise ValueError(f"sample ids {ids[~found][:10].tolist()} are not in the batch")
        rows = order[at]
        if n and np.bincount(rows, minlength=n).max() > 1:
            raise ValueError("sample ids repeat, so some batch rows got no loss")
        return rows

    def _check_images(self, batch: Batch) -> None:
        names = tuple(batch.images)
        if self._camera_names is not None and names != self._camera_names:
            raise ValueError(f"cameras changed from {self._camera_names} to {names}")
        for name, images in batch.images.items():
            shape = images.shape
            if images.dtype != np.uint8 or len(shape) != 4 or (shape[0], shape[3]) != (batch.size, 3):
                raise ValueError(
                    f"camera {name!r}: need ({batch.size}, H, W, 3) uint8 images, "
                    f"got {images.shape} {images.dtype}"
                )
        self._camera_names = names


def _top_k(losses: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best by (loss desc, id asc), in no particular order."""
    if losses.size <= k:
        return np.arange(losses.size)
    kth = np.partition(-losses, k - 1)[k - 1]
    above = np.flatnonzero(-losses < kth)
    tied = np.flatnonzero(-losses == kth)
    tied = tied[np.argsort(ids[tied], kind="stable")[: k - above.size]]
    return np.concatenate([above, tied])
