"""The records the hard-example pieces hand each other.

`Candidate` is what every host sends in the first gather (metadata, no pixels);
`HardExample` is a winner made loggable (thumbnail and decoded text), sent in the second;
`IntervalStats` sums up one host's interval. All fields hold plain Python values
(never numpy scalars), so they serialize and compare without surprises.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A sample in some host's top-K: enough to merge on, nothing to log yet."""

    sample_id: int
    loss: float
    step: int
    host: int


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class HardExample:
    """A merged winner, ready to log: `image` is the cameras side by side, (h, w * cams, 3)
    uint8. Equality compares the image by value (a dataclass's tuple compare can't)."""

    sample_id: int
    loss: float
    step: int
    host: int
    lang_action: str
    prompt: str
    token_len: int
    image: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HardExample):
            return NotImplemented
        fields = ("sample_id", "loss", "step", "host", "lang_action", "prompt", "token_len")
        return all(getattr(self, f) == getattr(other, f) for f in fields) and (
            self.image.dtype == other.image.dtype and np.array_equal(self.image, other.image)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class IntervalStats:
    """One host's statistics since the tracker's last reset.

    `num_samples` counts every valid (unmasked) sample, `num_nonfinite` those among them
    whose loss was NaN or inf; the loss fields (`loss_sum`, `loss_max`, `loss_min`) and
    `num_high_loss` cover only the finite ones, so the mean divides by `num_finite`.
    `first_step`/`last_step` are None before the first update, the loss extremes while
    no finite loss was seen, and `threshold` (the lowest loss in the top-K buffer) while
    the buffer is empty.
    """

    host: int
    first_step: int | None
    last_step: int | None
    num_samples: int
    loss_sum: float
    loss_max: float | None
    loss_min: float | None
    num_high_loss: int
    num_nonfinite: int
    threshold: float | None

    @property
    def num_finite(self) -> int:
        return self.num_samples - self.num_nonfinite

    @property
    def loss_mean(self) -> float | None:
        return self.loss_sum / self.num_finite if self.num_finite else None
