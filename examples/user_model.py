"""Bring your own model: a complete example of podharness's model interface
(harness/models/interface.py), loaded by path; no change to the harness needed.

    harness-train --config smoke --model examples/user_model.py:make_model
    harness-fit --config v4-8 --model examples/user_model.py:make_model --no_search

A module in an installed package works the same way: `--model my_pkg.my_module:make_model`.

The model: each camera pooled to an 8x8 grid of mean colours, the prompt's task words
averaged, the robot state, all projected into one feature vector and through a GELU
MLP (`--hidden_dim`, `--num_layers`). An action head predicts the action chunk; a token
head scores every language-action token from the features plus a position embedding.
The loss is built like the built-in models' (action MSE + weighted token CE), so the
hard-example tracker sees the same hard samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from harness.mock.data import ACTION_DIM, STATE_DIM, Batch
from harness.models.interface import ModelSpec, SampleOutputs

GRID = 8


class PooledMlpVla:
    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        s, d = self.spec, self.spec.hidden_dim
        shapes = {
            "image_proj": (s.num_cameras * GRID * GRID * 3, d),
            "word_embed": (s.vocab_size, d),
            "state_proj": (STATE_DIM, d),
            "position_embed": (s.seq_len, d),
            "token_head": (d, s.vocab_size),
            "action_head": (d, s.action_horizon * ACTION_DIM),
        }
        shapes |= {f"hidden_{i}": (d, d) for i in range(s.num_layers)}
        return shapes

    def init(self, key: jax.Array) -> dict[str, jax.Array]:
        shapes = self._shapes()
        keys = jax.random.split(key, len(shapes))
        dtype = jnp.dtype(self.spec.param_dtype)
        params = {name: (jax.random.normal(k, shape) / jnp.sqrt(shape[0])).astype(dtype)
                  for k, (name, shape) in zip(keys, sorted(shapes.items()))}
        params["action_head"] = params["action_head"] * 0.1
        return params

    def per_sample_outputs(self, params: dict, batch: Batch, dropout_key: jax.Array) -> SampleOutputs:
        params = jax.tree.map(lambda p: p.astype(self.spec.compute_dtype), params)
        pooled = []
        for name in sorted(batch.images):
            x = batch.images[name].astype(jnp.float32) / 255.0 - 0.5
            b, h, w, c = x.shape
            pooled.append(x.reshape(b, GRID, h // GRID, GRID, w // GRID, c).mean(axis=(2, 4)).reshape(b, -1))
        task = batch.tokenized_prompt_mask & ~batch.token_ar_mask
        words = (params["word_embed"][batch.tokenized_prompt] * task[..., None]).sum(1)
        words = words / jnp.maximum(task.sum(1, keepdims=True), 1)
        h = (jnp.concatenate(pooled, -1).astype(words.dtype) @ params["image_proj"] + words
             + batch.state.astype(words.dtype) @ params["state_proj"])
        for i, key in enumerate(jax.random.split(dropout_key, self.spec.num_layers)):
            h = h + jax.nn.gelu(h @ params[f"hidden_{i}"])
            if self.spec.dropout_rate > 0:
                keep = jax.random.bernoulli(key, 1.0 - self.spec.dropout_rate, h.shape)
                h = jnp.where(keep, h / (1.0 - self.spec.dropout_rate), 0).astype(h.dtype)

        logits = ((h[:, None, :] + params["position_embed"][None]) @ params["token_head"]).astype(jnp.float32)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        target = jnp.take_along_axis(log_probs, batch.tokenized_prompt[..., None], -1)[..., 0]
        scored = batch.token_loss_mask.astype(jnp.float32)
        token_ce = -(target * scored).sum(1) / jnp.maximum(scored.sum(1), 1.0)
        hits = ((logits.argmax(-1) == batch.tokenized_prompt) * scored).sum(1)

        actions = (h @ params["action_head"]).astype(jnp.float32).reshape(batch.actions.shape)
        action_mse = jnp.mean((actions - batch.actions) ** 2, axis=(1, 2))
        return SampleOutputs(action_mse + self.spec.token_loss_weight * token_ce, hits, scored.sum(1))

    def train_flops(self, batch_size: int) -> float:
        """Optional: matmul FLOPs of forward + backward, for harness-fit's step-time bound."""
        s, d = self.spec, self.spec.hidden_dim
        per_sample = 2 * d * (s.num_cameras * GRID * GRID * 3 + STATE_DIM + s.num_layers * d
                              + s.seq_len * s.vocab_size + s.action_horizon * ACTION_DIM)
        return 3.0 * batch_size * per_sample


def make_model(spec: ModelSpec) -> PooledMlpVla:
    """The factory `--model examples/user_model.py:make_model` names."""
    return PooledMlpVla(spec)
