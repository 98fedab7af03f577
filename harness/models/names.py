"""The names the model settings accept: built-in models, import paths of users'
models, transformer sizes (`--model transformer --model_size 1b`), dtypes and remat
policies. Pure Python, so config validation reads it without importing JAX.

Widths are multiples of 256, so every large weight splits over any power-of-two `fsdp`
axis up to 256 (a v5e/v6e-256 slice). Parameter counts are for the default data
(vocab 256, two 224x224 cameras): ~12 * width^2 per layer plus small embeddings.
"""

from __future__ import annotations

import dataclasses

BUILTIN_MODELS = ("mlp", "transformer")
PARAM_DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "offload")


def is_import_path(name: str) -> bool:
    """`pkg.module:factory` or `path/to/module.py:factory`: the forms of a user's model."""
    module, sep, attr = name.rpartition(":")
    return bool(sep and module and attr)


@dataclasses.dataclass(frozen=True)
class TransformerSize:
    width: int
    depth: int
    heads: int
    mlp_width: int


TRANSFORMER_SIZES = {
    "tiny": TransformerSize(width=128, depth=2, heads=4, mlp_width=512),          # 0.6M: CPU tests
    "10m": TransformerSize(width=256, depth=12, heads=4, mlp_width=1024),         # 9.9M
    "100m": TransformerSize(width=768, depth=12, heads=12, mlp_width=3072),       # 86M
    "1b": TransformerSize(width=2048, depth=20, heads=16, mlp_width=8192),        # 1.01B
    "3b": TransformerSize(width=3072, depth=26, heads=24, mlp_width=12288),       # 2.95B
    "8b": TransformerSize(width=4096, depth=40, heads=32, mlp_width=16384),       # 8.06B
}


def custom_size(hidden_dim: int, num_layers: int) -> TransformerSize:
    """`--model_size ""`: the size from --hidden_dim/--num_layers, 64-wide heads where
    the width allows (else one head), MLP 4x wide."""
    heads = hidden_dim // 64 if hidden_dim % 64 == 0 else 1
    return TransformerSize(width=hidden_dim, depth=num_layers, heads=heads, mlp_width=4 * hidden_dim)
