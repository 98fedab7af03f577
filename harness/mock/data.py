"""Mock robot data: samples shaped like real multi-camera, language-conditioned data.

A random-access source: every sample is a pure function of `(seed, record key)`, and
its `sample_id` is its key. The input pipeline (harness/train/pipeline.py) decides which
keys each host reads at each step and keeps that position as checkpointable iterator
state; a sample can be read again by its key alone (the hard-example tracker does so
after a resume). The `sample_id` travels through the device with the batch so
per-sample losses can be paired with the right host-local sample.

Hard samples are built into the data, as in real logs: a fraction of samples have an
occluded, over-exposed camera view and noisy action labels, so their loss stays high
while the model trains (label noise is irreducible).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from harness.config import DataConfig
from harness.mock.tokenizer import BOS, DIRECTIONS, EOS, MAX_AMOUNT, SEP, MockTokenizer

STATE_DIM = 7
ACTION_DIM = 7
CAMERA_NAMES = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb", "top_0_rgb")

# What task prompts are drawn from: `TASKS[i].format(c=color, o=object, p=place)`, then
# an ending. Every word here has its own token (MockTokenizer's vocabulary), so a caption
# decoded from the tokens is the prompt that was drawn (tests/test_captions.py).
COLORS = {
    "red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200),
    "yellow": (220, 200, 40), "black": (25, 25, 25), "white": (235, 235, 235),
}
OBJECTS = ("block", "cup", "bowl", "sponge", "towel", "lid", "plate", "spoon", "bottle", "marker")
PLACES = ("table", "shelf", "sink", "drawer", "plate", "bowl")
TASKS = ("pick up the {c} {o} and put it in the {p}", "push the {c} {o} to the {p}",
         "place the {c} {o} on the {p}", "pull the {c} {o} from the {p}",
         "wipe the {p} with the {c} {o}", "stack the {c} {o} on the {p}")
ENDINGS = ("", "slowly", "carefully", "then fold the towel", "near the left side",
           "to the far right corner of the table")
_CAMERA_TINTS = np.array([(0.55, 0.50, 0.45), (0.40, 0.45, 0.50), (0.45, 0.50, 0.40),
                          (0.50, 0.45, 0.55)], dtype=np.float32)


class Batch(NamedTuple):
    """One batch (host-local numpy, or global sharded jax arrays). A NamedTuple is a
    pytree, so the same type flows through `jax.jit` without registration."""

    images: dict[str, np.ndarray]        # camera -> (B, H, W, 3) uint8
    tokenized_prompt: np.ndarray         # (B, L) int32: <bos> task <sep> action <eos> <pad>...
    tokenized_prompt_mask: np.ndarray    # (B, L) bool: real tokens
    tokenized_langact_mask: np.ndarray   # (B, L) bool: the language action (subset of prompt)
    token_ar_mask: np.ndarray            # (B, L) bool: autoregressive part (action + <eos>)
    token_loss_mask: np.ndarray          # (B, L) bool: tokens the model is scored on
    sample_mask: np.ndarray              # (B,) bool: valid samples
    state: np.ndarray                    # (B, 7) float32 robot state
    actions: np.ndarray                  # (B, horizon, 7) float32 target actions
    sample_id: np.ndarray                # (B,) int32, unique across steps and hosts

    @property
    def size(self) -> int:
        return int(self.sample_id.shape[0])


def camera_names(spec: DataConfig) -> tuple[str, ...]:
    return CAMERA_NAMES[: spec.num_cameras]


def sample_bytes(spec: DataConfig) -> int:
    """Host bytes of one sample of a `Batch`: cameras, prompt tokens and their four
    masks, state, actions, the sample mask and id."""
    images = spec.num_cameras * spec.image_size * spec.image_size * 3
    tokens = spec.seq_len * (4 + 4)
    return images + tokens + 4 * STATE_DIM + 4 * spec.action_horizon * ACTION_DIM + 1 + 4


class MockDataset:
    """The mock source, and which keys one process of a (possibly multi-host) run reads."""

    def __init__(self, spec: DataConfig, seed: int, process_index: int = 0, process_count: int = 1):
        if spec.batch_size % process_count:
            raise ValueError(
                f"batch size {spec.batch_size} is not divisible by the "
                f"{process_count} processes"
            )
        if not 1 <= spec.num_cameras <= len(CAMERA_NAMES):
            raise ValueError(f"num_cameras must be in 1..{len(CAMERA_NAMES)}, got {spec.num_cameras}")
        self.spec = spec
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch_size = spec.batch_size // process_count
        self.tokenizer = MockTokenizer(vocab_size=spec.vocab_size, max_tokens=spec.seq_len)
        self._grid_y = ((np.arange(spec.image_size, dtype=np.float32) + 0.5) / spec.image_size)[None, :, None]

    def keys_at(self, step: int) -> np.ndarray:
        """The record keys this host reads at `step`: each step takes the next
        `batch_size` keys, host i the i-th block of them. The input pipeline
        (harness/train/pipeline.py) walks the same blocks; this is for tests and tools."""
        n = self.local_batch_size
        first = step * self.spec.batch_size + self.process_index * n
        return np.arange(first, first + n, dtype=np.int64)

    def batch_at(self, step: int) -> Batch:
        """This host's batch of `step`: `records(keys_at(step))`."""
        return self.records(self.keys_at(step))

    def records(self, keys: np.ndarray) -> Batch:
        """The samples with these record keys, as one batch. Each sample is a pure
        function of (seed, key), so a sample reads the same in any batch, on any host,
        and after any restart; its `sample_id` is its key."""
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size and (keys.min() < 0 or keys.max() > np.iinfo(np.int32).max):
            raise OverflowError(f"record keys (sample ids, int32) must be in [0, 2**31): got {keys.min()}..{keys.max()}; "
                                f"lower the step count or batch")
        n = keys.size
        rngs = [np.random.default_rng([self.seed, int(key)]) for key in keys]
        hard = np.array([rng.random() < self.spec.hard_fraction for rng in rngs], dtype=bool)
        prompts, langacts, displacement, colors = self._language(rngs)
        tokens, prompt_mask, langact_mask, ar_mask = self._tokenize(prompts, langacts)
        state = np.stack([rng.uniform(-1.0, 1.0, size=STATE_DIM) for rng in rngs]).astype(np.float32) \
            if n else np.zeros((0, STATE_DIM), np.float32)
        actions = self._actions(rngs, state, displacement, hard)
        images = {
            name: self._render(rngs, camera, state, colors, hard)
            for camera, name in enumerate(camera_names(self.spec))
        }
        return Batch(
            images=images,
            tokenized_prompt=tokens,
            tokenized_prompt_mask=prompt_mask,
            tokenized_langact_mask=langact_mask,
            token_ar_mask=ar_mask,
            token_loss_mask=ar_mask.copy(),
            sample_mask=np.ones(n, dtype=bool),  # mock data has no invalid samples
            state=state,
            actions=actions,
            sample_id=keys.astype(np.int32),
        )

    def _language(self, rngs: list[np.random.Generator]):
        """Task prompts and language actions; the actions' displacement feeds the labels."""
        n = len(rngs)
        prompts, langacts = [], []
        displacement = np.zeros((n, 3), dtype=np.float32)
        colors = np.zeros((n, 3), dtype=np.float32)
        color_names = list(COLORS)
        for i, rng in enumerate(rngs):
            color = color_names[rng.integers(len(color_names))]
            template = TASKS[rng.integers(len(TASKS))]
            task = template.format(c=color, o=OBJECTS[rng.integers(len(OBJECTS))],
                                   p=PLACES[rng.integers(len(PLACES))])
            ending = ENDINGS[rng.integers(len(ENDINGS))]
            prompts.append(f"{task} {ending}".strip())
            clauses = []
            for _ in range(rng.integers(1, 4)):
                direction = int(rng.integers(len(DIRECTIONS)))
                amount = int(rng.integers(1, MAX_AMOUNT + 1))
                clauses.append(f"move {DIRECTIONS[direction]} {amount}cm")
                axis, sign = divmod(direction, 2)
                displacement[i, axis] += (1.0 - 2.0 * sign) * amount / 10.0
            langacts.append(" and ".join(clauses))
            colors[i] = COLORS[color]
        return prompts, langacts, displacement, colors

    def _tokenize(self, prompts: list[str], langacts: list[str]):
        n, seq_len = len(prompts), self.spec.seq_len
        tokens = np.zeros((n, seq_len), dtype=np.int32)
        langact_mask = np.zeros((n, seq_len), dtype=bool)
        ar_mask = np.zeros((n, seq_len), dtype=bool)
        for i, (prompt, langact) in enumerate(zip(prompts, langacts)):
            task_ids = self.tokenizer.encode_words(prompt)
            act_ids = self.tokenizer.encode_words(langact)
            row = np.concatenate([[BOS], task_ids, [SEP], act_ids, [EOS]])[:seq_len]
            tokens[i, : len(row)] = row
            start = min(len(task_ids) + 2, seq_len)
            stop = min(start + len(act_ids), seq_len)
            langact_mask[i, start:stop] = True
            ar_mask[i, start : min(stop + 1, len(row))] = True
        return tokens, tokens != 0, langact_mask, ar_mask

    def _actions(self, rngs, state, displacement, hard) -> np.ndarray:
        """Labels: a learnable function of state and language, plus per-sample noise.

        Easy samples get noise variance ~0.3-1.2, hard ones ~3-9 (irreducible), which
        gives the loss distribution the tracker is meant to find.
        """
        n, horizon = state.shape[0], self.spec.action_horizon
        ramp = np.linspace(0.5, 1.0, horizon, dtype=np.float32)[None, :, None]
        signal = np.zeros((n, horizon, ACTION_DIM), dtype=np.float32)
        signal[:, :, :3] = 0.25 * displacement[:, None, :] * ramp
        signal[:, :, 3:] = 0.6 * np.tanh(state[:, None, 3:] - state[:, None, :4]) * ramp
        sigma = np.array([np.sqrt(rng.uniform(3.0, 9.0) if h else rng.uniform(0.3, 1.2))
                          for rng, h in zip(rngs, hard)], dtype=np.float32)
        noise = np.stack([rng.standard_normal((horizon, ACTION_DIM)) for rng in rngs]).astype(np.float32) \
            if n else np.zeros((0, horizon, ACTION_DIM), np.float32)
        return signal + noise * sigma[:, None, None]

    def _render(self, rngs, camera: int, state, colors, hard) -> np.ndarray:
        """A table scene: tinted background, the prompt's coloured object placed by the
        robot state, a gripper bar; hard samples get an occluding band and glare.

        Drawn in uint8 with per-sample bounding boxes: full-frame float passes cost
        ~1.5 s for 256 samples at 224x224, this costs a few tens of ms.
        """
        n, size = state.shape[0], self.spec.image_size
        brightness = np.array([rng.uniform(0.8, 1.1) for rng in rngs], dtype=np.float64).reshape(n, 1)
        shade = (0.6 + 0.4 * self._grid_y[0, :, 0])[None, :] * brightness
        rows = (shade[..., None] * (255.0 * _CAMERA_TINTS[camera])).astype(np.uint8)
        image = _fill_columns(rows, size)
        zoom = 1.0 if camera == 0 else 1.8
        centers = np.clip(0.5 + 0.3 * state[:, :2], 0.0, 1.0) * size
        radii = (0.08 + 0.04 * (state[:, 2] + 1.0)) * zoom * size
        grip_x = np.clip(0.5 + 0.2 * state[:, 3], 0.0, 1.0) * size
        grip_w, grip_h = max(1, int(0.03 * size)), int(0.35 * size)
        disc = np.arange(size, dtype=np.float32) + 0.5
        for i in range(n):
            (cy, cx), r = centers[i], radii[i]
            y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
            x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
            inside = (disc[y0:y1, None] - cy) ** 2 + (disc[None, x0:x1] - cx) ** 2 < r * r
            image[i, y0:y1, x0:x1][inside] = colors[i]
            gx = int(grip_x[i])
            image[i, :grip_h, max(0, gx - grip_w) : gx + grip_w] = 90
        for i in np.flatnonzero(hard):
            top = int(rngs[i].integers(0, size // 2))
            band = image[i, top : top + size // 3]
            band //= 7
            glare = image[i, :, : size // 4].astype(np.uint16) * 2 + 60
            image[i, :, : size // 4] = np.minimum(glare, 255).astype(np.uint8)
        return image


def _fill_columns(rows: np.ndarray, width: int) -> np.ndarray:
    """(n, H, 3) rows -> (n, H, width, 3) images with every column equal to the row.

    Copies column blocks of doubling width: ~2.7x faster than materializing a
    broadcast view, which numpy copies element by element.
    """
    n, height, channels = rows.shape
    image = np.empty((n, height, width, channels), dtype=rows.dtype)
    image[:, :, 0, :] = rows
    filled = 1
    while filled < width:
        block = min(filled, width - filled)
        image[:, :, filled : filled + block, :] = image[:, :, :block, :]
        filled += block
    return image
