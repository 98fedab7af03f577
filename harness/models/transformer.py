"""The transformer VLA mock (`--model transformer --model_size tiny|10m|100m|1b|3b|8b`):
a model of real size, so harness-fit's memory and FLOPs mean something.

Sequence: every camera cut into 16x16 patches (linear patch embedding), one robot-state
token, the prompt tokens, and one learned action-query token, plus learned positions.
Attention is prefix-LM (PaliGemma/pi0 style): the images, the state and the task words
see each other; the language action is causal; the action query sees everything and
nothing sees it. The body is N pre-norm decoder blocks (multi-head attention + GELU
MLP), stacked along a leading layer axis and run with `lax.scan`, so compile time does
not grow with depth. A token head predicts each next prompt token; an action head reads
the action query's output.

Per-sample loss = action MSE + `token_loss_weight` * next-token cross-entropy over the
scored tokens: built like the MLP's, so hard samples (label noise) stay hard.

`remat`: "full" recomputes each block in the backward pass (only the residual stream
between blocks is kept); "dots" keeps the projections' outputs and recomputes the
rest (attention scores, norms, activations); "offload" is "dots" with the kept outputs
moved to the host's pinned memory until the backward pass needs them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from harness.errors import UsageError
from harness.mock.data import ACTION_DIM, STATE_DIM, Batch
from harness.models.interface import ModelSpec, Params, SampleOutputs, batch_sharded
from harness.models.names import TRANSFORMER_SIZES, TransformerSize, custom_size

PATCH_SIZE = 16
EMBED_STD = 0.02
NORM_EPS = 1e-6


def resolve_size(spec: ModelSpec) -> TransformerSize:
    if not spec.model_size:
        return custom_size(spec.hidden_dim, spec.num_layers)
    if spec.model_size not in TRANSFORMER_SIZES:
        raise UsageError(f"unknown --model_size {spec.model_size!r} (transformer sizes: {', '.join(TRANSFORMER_SIZES)})")
    return TRANSFORMER_SIZES[spec.model_size]


def _rms_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + NORM_EPS)
    return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


def _dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    if rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _remat_policy(name: str):
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if name == "offload":
        return jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    return None


class VlaTransformer:
    """Implements harness/models/interface.py's Model."""

    def __init__(self, spec: ModelSpec):
        if spec.image_size % PATCH_SIZE:
            raise UsageError(f"--image_size must be a multiple of the transformer's {PATCH_SIZE}-pixel "
                             f"patches, got {spec.image_size}")
        self.spec = spec
        self.size = resolve_size(spec)
        if self.size.width % self.size.heads:
            raise UsageError(f"transformer width {self.size.width} does not split into {self.size.heads} heads")
        self.param_dtype = jnp.dtype(spec.param_dtype)
        self.compute_dtype = jnp.dtype(spec.compute_dtype)
        self.patches_per_camera = (spec.image_size // PATCH_SIZE) ** 2
        self.num_patches = spec.num_cameras * self.patches_per_camera
        self.text_start = self.num_patches + 1  # after the patches and the state token
        self.seq_len = self.text_start + spec.seq_len + 1  # ... and the action query last

    def param_shapes(self) -> dict:
        """Every parameter's shape; the blocks' weights carry a leading layer axis."""
        s, z = self.spec, self.size
        d, depth = z.width, z.depth
        return {
            "patch_embed": (PATCH_SIZE * PATCH_SIZE * 3, d),
            "state_embed": (STATE_DIM, d),
            "token_embed": (s.vocab_size, d),
            "position_embed": (self.seq_len, d),
            "action_query": (d,),
            "final_norm": (d,),
            "token_head": (d, s.vocab_size),
            "action_head": (d, s.action_horizon * ACTION_DIM),
            "blocks": {
                "attn_norm": (depth, d),
                "qkv": (depth, d, 3 * d),
                "attn_out": (depth, d, d),
                "mlp_norm": (depth, d),
                "mlp_in": (depth, d, z.mlp_width),
                "mlp_out": (depth, z.mlp_width, d),
            },
        }

    def init(self, key: jax.Array) -> Params:
        """Matrices ~ N(0, 1/fan_in) (residual outputs also / sqrt(2 * depth)), embeddings
        ~ N(0, 0.02^2), norm scales 1, the action head small (an untrained model predicts
        ~0, so a sample's loss starts at its label variance, as with the MLP)."""
        shapes = self.param_shapes()
        flat, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
        names = [jax.tree_util.keystr(path) for path, _ in
                 jax.tree.flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
        keys = jax.random.split(key, len(flat))
        residual_scale = 1.0 / math.sqrt(2 * self.size.depth)
        leaves = []
        for name, shape, k in zip(names, flat, keys):
            if "norm" in name:
                value = jnp.ones(shape, jnp.float32)
            elif name.endswith(("embed']", "action_query']")):
                value = EMBED_STD * jax.random.normal(k, shape, jnp.float32)
            else:
                value = jax.random.normal(k, shape, jnp.float32) / math.sqrt(shape[-2])
                if name.endswith(("attn_out']", "mlp_out']")):
                    value = value * residual_scale
                elif name.endswith("action_head']"):
                    value = value * 0.1
            leaves.append(value.astype(self.param_dtype))
        return jax.tree.unflatten(treedef, leaves)

    def _embed(self, params: Params, batch: Batch) -> jax.Array:
        """(B, T, d): patches, state, prompt tokens, action query; plus positions."""
        dtype = self.compute_dtype
        patches = []
        for name in sorted(batch.images):
            x = batch.images[name].astype(dtype) / 255.0 - 0.5
            b, h, w, c = x.shape
            x = x.reshape(b, h // PATCH_SIZE, PATCH_SIZE, w // PATCH_SIZE, PATCH_SIZE, c)
            patches.append(x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, PATCH_SIZE * PATCH_SIZE * c))
        image_tokens = jnp.concatenate(patches, axis=1) @ params["patch_embed"]
        state_token = (batch.state.astype(dtype) @ params["state_embed"])[:, None]
        text_tokens = params["token_embed"][batch.tokenized_prompt]
        query = jnp.broadcast_to(params["action_query"], (image_tokens.shape[0], 1, image_tokens.shape[-1]))
        x = jnp.concatenate([image_tokens, state_token, text_tokens, query], axis=1)
        return x + params["position_embed"][None]

    def _attention_mask(self, batch: Batch) -> jax.Array:
        """(B, T, T) prefix-LM mask: query i sees key j iff j is real and j's
        autoregressive rank is <= i's (the ranks count language-action tokens)."""
        b = batch.tokenized_prompt.shape[0]
        ones = jnp.ones((b, self.num_patches + 1), bool)
        valid = jnp.concatenate([ones, batch.tokenized_prompt_mask, jnp.ones((b, 1), bool)], axis=1)
        ar = jnp.concatenate([jnp.zeros_like(ones), batch.token_ar_mask, jnp.ones((b, 1), bool)], axis=1)
        rank = jnp.cumsum(ar.astype(jnp.int32), axis=1)
        return valid[:, None, :] & (rank[:, None, :] <= rank[:, :, None])

    def _block(self, h: jax.Array, layer: tuple[Params, jax.Array], mask: jax.Array) -> tuple[jax.Array, None]:
        w, key = layer
        heads = self.size.heads
        b, t, d = h.shape
        attn_key, mlp_key = jax.random.split(key)
        x = _rms_norm(h, w["attn_norm"])
        qkv = batch_sharded((x @ w["qkv"]).reshape(b, t, 3 * heads, d // heads))
        q, k, v = jnp.split(qkv, 3, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(d // heads)
        scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(h.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
        h = batch_sharded(h + _dropout(attended @ w["attn_out"], self.spec.dropout_rate, attn_key))
        x = _rms_norm(h, w["mlp_norm"])
        hidden = batch_sharded(jax.nn.gelu(x @ w["mlp_in"]))
        h = batch_sharded(h + _dropout(hidden @ w["mlp_out"], self.spec.dropout_rate, mlp_key))
        return h, None

    def per_sample_outputs(self, params: Params, batch: Batch, dropout_key: jax.Array) -> SampleOutputs:
        params = jax.tree.map(lambda p: p.astype(self.compute_dtype), params)
        mask = self._attention_mask(batch)
        block = lambda h, layer: self._block(h, layer, mask)
        policy = _remat_policy(self.spec.remat)
        if policy is not None:
            block = jax.checkpoint(block, policy=policy, prevent_cse=False)
        layer_keys = jax.random.split(dropout_key, self.size.depth)
        h, _ = jax.lax.scan(block, batch_sharded(self._embed(params, batch)), (params["blocks"], layer_keys))
        h = _rms_norm(h, params["final_norm"])

        # Token head: position i predicts prompt token i + 1.
        text = h[:, self.text_start:self.text_start + self.spec.seq_len - 1]
        logits = (text @ params["token_head"]).astype(jnp.float32)
        targets = batch.tokenized_prompt[:, 1:]
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
        scored = batch.token_loss_mask[:, 1:].astype(jnp.float32)
        token_ce = -(target_log_probs * scored).sum(axis=1) / jnp.maximum(scored.sum(axis=1), 1.0)
        token_hits = ((logits.argmax(-1) == targets) * scored).sum(axis=1)

        # Action head: the action query's output.
        predicted = (h[:, -1] @ params["action_head"]).astype(jnp.float32).reshape(batch.actions.shape)
        action_mse = jnp.mean((predicted - batch.actions) ** 2, axis=(1, 2))

        loss = action_mse + self.spec.token_loss_weight * token_ce
        return SampleOutputs(loss, token_hits, scored.sum(axis=1))

    def param_count(self) -> int:
        return sum(math.prod(shape) for shape in
                   jax.tree.leaves(self.param_shapes(), is_leaf=lambda x: isinstance(x, tuple)))

    def remat_flops(self, batch_size: int) -> float:
        """Matmul FLOPs the backward pass recomputes under the remat policy: the blocks'
        whole forward ("full"), or the attention einsums, whose batch dimensions keep
        them out of the saved dots ("dots", "offload"); none without remat."""
        t, d = self.seq_len, self.size.width
        if self.spec.remat == "full":
            per_layer = 2 * t * (4 * d * d + 2 * d * self.size.mlp_width) + 4 * t * t * d
        elif self.spec.remat in ("dots", "offload"):
            per_layer = 4 * t * t * d
        else:
            return 0.0
        return float(batch_size * self.size.depth * per_layer)

    def train_flops(self, batch_size: int) -> float:
        """Matmul FLOPs of forward + backward (3x forward), excluding remat's recompute:
        projections 2 * T * weights, attention 4 * T^2 * d per layer, the heads."""
        s, z = self.spec, self.size
        t, d = self.seq_len, z.width
        per_layer = 2 * t * (4 * d * d + 2 * d * z.mlp_width) + 4 * t * t * d
        embed = 2 * self.num_patches * PATCH_SIZE * PATCH_SIZE * 3 * d + 2 * STATE_DIM * d
        heads = 2 * (s.seq_len - 1) * d * s.vocab_size + 2 * d * s.action_horizon * ACTION_DIM
        return 3.0 * batch_size * (embed + z.depth * per_layer + heads)


def make_model(spec: ModelSpec) -> VlaTransformer:
    return VlaTransformer(spec)
