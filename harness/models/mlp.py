"""The default model (`--model mlp`): a tiny vision-language-action MLP whose loss
really depends on its parameters.

Inputs: pooled camera patches, the task words of the prompt, the robot state. The trunk
(an MLP, `num_layers` x `hidden_dim`) feeds two heads, as in chain-of-thought VLA
models: a token head that predicts the language action, and an action head that sees
the trunk plus the language action and predicts the action chunk.

Per-sample loss = action MSE + `token_loss_weight` * token cross-entropy. Hard samples
carry label noise (see harness/mock/data.py), so their loss stays ~3-10 while the easy ones'
falls towards ~0.5-1.5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from harness.mock.data import ACTION_DIM, STATE_DIM, Batch
from harness.models.interface import ModelSpec, SampleOutputs

PATCH_GRID = 4  # each camera is pooled to a 4x4 grid of mean colours

Params = dict[str, jax.Array]


def init_params(spec: ModelSpec, key: jax.Array) -> Params:
    """Scaled-normal init; biases zero. Keys are split the same way on any mesh."""
    image_features = spec.num_cameras * PATCH_GRID * PATCH_GRID * 3
    shapes = {
        "image_proj": (image_features, spec.hidden_dim),
        "token_embed": (spec.vocab_size, spec.hidden_dim),
        "state_proj": (STATE_DIM, spec.hidden_dim),
        "position_embed": (spec.seq_len, spec.hidden_dim),
        "token_head": (spec.hidden_dim, spec.vocab_size),
        "action_head": (spec.hidden_dim, spec.action_horizon * ACTION_DIM),
    }
    for layer in range(spec.num_layers):
        shapes[f"layer_{layer}_kernel"] = (spec.hidden_dim, spec.hidden_dim)
    keys = jax.random.split(key, len(shapes))
    params = {
        name: jax.random.normal(k, shape, jnp.float32) / jnp.sqrt(shape[0])
        for k, (name, shape) in zip(keys, sorted(shapes.items()))
    }
    params["action_head"] = params["action_head"] * 0.1
    for layer in range(spec.num_layers):
        params[f"layer_{layer}_bias"] = jnp.zeros((spec.hidden_dim,), jnp.float32)
    return params


def _pooled_images(images: dict[str, jax.Array]) -> jax.Array:
    features = []
    for name in sorted(images):
        x = images[name].astype(jnp.float32) / 255.0
        b, h, w, c = x.shape
        x = x.reshape(b, PATCH_GRID, h // PATCH_GRID, PATCH_GRID, w // PATCH_GRID, c)
        features.append(x.mean(axis=(2, 4)).reshape(b, -1) - 0.5)
    return jnp.concatenate(features, axis=-1)


def _masked_mean_embedding(params: Params, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    embedded = params["token_embed"][tokens] * mask[..., None]
    return embedded.sum(axis=1) / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)


def per_sample_outputs(params: Params, batch: Batch, spec: ModelSpec, dropout_key: jax.Array) -> SampleOutputs:
    """Per-sample loss (B,), per-sample token hits (B,), per-sample scored tokens (B,)."""
    prefix_mask = batch.tokenized_prompt_mask & ~batch.token_ar_mask
    h = (
        _pooled_images(batch.images) @ params["image_proj"]
        + _masked_mean_embedding(params, batch.tokenized_prompt, prefix_mask)
        + batch.state @ params["state_proj"]
    )
    keys = jax.random.split(dropout_key, spec.num_layers)
    for layer in range(spec.num_layers):
        h = jax.nn.gelu(h @ params[f"layer_{layer}_kernel"] + params[f"layer_{layer}_bias"]) + h
        if spec.dropout_rate > 0:
            keep = jax.random.bernoulli(keys[layer], 1.0 - spec.dropout_rate, h.shape)
            h = jnp.where(keep, h / (1.0 - spec.dropout_rate), 0.0)

    # Token head: predict every scored token (the language action and <eos>).
    # (h + position) @ W computed as h @ W + position @ W: the same logits for
    # B*V + L*V products instead of B*L*V.
    logits = (h @ params["token_head"])[:, None, :] + (params["position_embed"] @ params["token_head"])[None]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, batch.tokenized_prompt[..., None], -1)[..., 0]
    scored = batch.token_loss_mask.astype(jnp.float32)
    num_scored = jnp.maximum(scored.sum(axis=1), 1.0)
    token_ce = -(target_log_probs * scored).sum(axis=1) / num_scored
    token_hits = ((logits.argmax(-1) == batch.tokenized_prompt) * scored).sum(axis=1)

    # Action head: conditioned on the trunk and on the language action.
    langact = _masked_mean_embedding(params, batch.tokenized_prompt, batch.tokenized_langact_mask)
    predicted = ((h + langact) @ params["action_head"]).reshape(batch.actions.shape)
    action_mse = jnp.mean((predicted - batch.actions) ** 2, axis=(1, 2))

    loss = action_mse + spec.token_loss_weight * token_ce
    return SampleOutputs(loss, token_hits, scored.sum(axis=1))


class VlaMlp:
    """The MLP behind the model interface (harness/models/interface.py)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def init(self, key: jax.Array) -> Params:
        return init_params(self.spec, key)

    def per_sample_outputs(self, params: Params, batch: Batch, dropout_key: jax.Array) -> SampleOutputs:
        return per_sample_outputs(params, batch, self.spec, dropout_key)

    def train_flops(self, batch_size: int) -> float:
        """Matmul FLOPs of forward + backward (3x forward); the position @ token-head
        product is computed once per batch, not per sample."""
        s = self.spec
        d, v = s.hidden_dim, s.vocab_size
        image_features = s.num_cameras * PATCH_GRID * PATCH_GRID * 3
        per_sample = 2 * d * (image_features + STATE_DIM + s.num_layers * d + v + s.action_horizon * ACTION_DIM)
        per_batch = 2 * s.seq_len * d * v
        return 3.0 * (batch_size * per_sample + per_batch)


def make_model(spec: ModelSpec) -> VlaMlp:
    return VlaMlp(spec)
