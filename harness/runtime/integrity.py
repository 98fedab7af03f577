"""Checksums of a sharded state, computed on the devices, that do not depend on sharding.

A checkpoint stores one checksum per array leaf in its metadata; a restore recomputes
them on what it read and compares. So a flipped byte anywhere in array data is caught
even when the storage layer (OCDBT, zarr, compression) reads it back without complaint,
and a checkpoint written on one mesh is verified when restored onto another.

The checksum of a leaf is two 32-bit sums over its elements' bit patterns `x_i`
(bitcast to uint32), each weighted by an odd function of the element's flat index `i`:

    a = sum_i x_i * (2 * i + 1)               mod 2**32
    b = sum_i (x_i ^ mix(i)) * (2 * mix(i) + 1)  mod 2**32

Wrapping integer sums are exact and order-free, so every reduction order (every mesh,
every process count) gives the same bits, and the result is replicated: every host gets
the same verdict. An odd weight is invertible mod 2**32, so changing any one element
always changes `a`; `b` catches most multi-element changes that `a` misses.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)


def _bits(x: jax.Array) -> jax.Array:
    """Each element's bit pattern as uint32 (8 and 16-bit types widened, bool as 0/1)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    width = x.dtype.itemsize
    if width == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if width in (1, 2):
        unsigned = {1: jnp.uint8, 2: jnp.uint16}[width]
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    if width == 8:
        halves = jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2)
        return halves[..., 0] ^ (halves[..., 1] * jnp.uint32(0x85EBCA6B))
    raise TypeError(f"no checksum for dtype {x.dtype}")


def _leaf_checksum(x: jax.Array) -> jax.Array:
    bits = _bits(x).reshape(-1)
    index = jnp.arange(bits.shape[0], dtype=jnp.uint32)
    mixed = (index ^ (index >> 16)) * _GOLDEN
    a = jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)
    b = jnp.sum((bits ^ mixed) * (2 * mixed + 1), dtype=jnp.uint32)
    return jnp.stack([a, b])


def _leaf_finite(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(x))
    return jnp.bool_(True)


@jax.jit
def _inspect(tree: Any) -> Any:
    return jax.tree.map(_leaf_checksum, tree), jax.tree.map(_leaf_finite, tree)


def inspect_state(tree: Any) -> tuple[dict[str, str], list[str]]:
    """`({leaf path: "aaaaaaaa-bbbbbbbb"}, [paths of leaves holding nan/inf])` for every
    array leaf of `tree`, in one pass on the devices. A collective when the arrays span
    several hosts: every host calls it with the same tree, and gets the same answer."""
    sums, finite = jax.device_get(_inspect(tree))
    flat_sums, _ = jax.tree_util.tree_flatten_with_path(sums)
    flat_finite, _ = jax.tree_util.tree_flatten_with_path(finite)
    checksums = {jax.tree_util.keystr(path): f"{int(v[0]):08x}-{int(v[1]):08x}" for path, v in flat_sums}
    return checksums, [jax.tree_util.keystr(path) for path, ok in flat_finite if not ok]


def mismatched_leaves(saved: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Leaf paths whose checksum differs, or that only one side has."""
    return sorted(path for path in saved.keys() | actual.keys() if saved.get(path) != actual.get(path))
