"""Checksums of a sharded state, computed on its devices, that do not depend on how it
is sharded.

A checkpoint stores one checksum per array leaf in its metadata; a restore recomputes
them on what it read and compares. So a flipped byte anywhere in array data is caught
even when the storage layer (OCDBT, zarr, compression) reads it back without complaint,
and a checkpoint written on one mesh is verified when restored onto another.

The checksum of a leaf (format 1) is two 32-bit sums over its elements' bit patterns
`x_i` (widened to uint32; 64-bit ones folded), each weighted by an odd function of the
element's flat index `i` in the global array:

    a = sum_i x_i * (2 * i + 1)                    mod 2**32
    b = sum_i (x_i ^ mix(i)) * (2 * mix(i) + 1)    mod 2**32

Wrapping integer sums are exact and order-free, so any mesh and process count gives the
same bits. An odd weight is invertible mod 2**32, so changing any one element always
changes `a`; `b` catches most multi-element changes that `a` misses.

All leaves go through ONE jitted program on the devices that hold them: per-leaf sums
and, for every floating leaf (bfloat16 and float16 included), a count of non-finite
values. The partitioner turns each sum into per-device partial sums plus a reduction
across devices; the result is a small replicated (leaves, 3) array, the only thing
copied to the host (12 bytes per leaf, not the state). Every host gets the same result.
`bench/checkpoint_stall.py` measures it against the host-side copy it replaced.

Tests: `.venv/bin/python -m pytest -q tests/test_integrity.py tests/test_integrity_multihost.py`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from harness.errors import UsageError

CHECKSUM_FORMAT = 1  # the formula above; stored beside the checksums in a checkpoint
_GOLDEN = np.uint32(0x9E3779B9)
_WIDE = np.uint32(0x85EBCA6B)


def _bits(x: jax.Array) -> jax.Array:
    """Each element's bit pattern as uint32 (narrow types widened, 64-bit ones folded)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = jnp.dtype(x.dtype).itemsize
    if width in (1, 2, 4):
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    if width == 8:
        halves = jax.lax.bitcast_convert_type(x, jnp.uint32)
        return halves[..., 0] ^ (halves[..., 1] * _WIDE)
    raise TypeError(f"no checksum for dtype {x.dtype}")


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """The global flat index (mod 2**32) of every element of an array of `shape`."""
    flat = jnp.zeros(shape, dtype=jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        flat = flat + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride % 2**32)
        stride *= shape[dim]
    return flat


def _leaf_summary(x: jax.Array) -> jax.Array:
    """(a, b, non-finite count) of one leaf, as uint32."""
    bits, index = _bits(x), _flat_index(x.shape)
    mixed = (index ^ (index >> 16)) * _GOLDEN
    a = jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)
    b = jnp.sum((bits ^ mixed) * (2 * mixed + 1), dtype=jnp.uint32)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        nonfinite = jnp.sum(~jnp.isfinite(x), dtype=jnp.uint32)
    else:
        nonfinite = jnp.uint32(0)
    return jnp.stack([a, b, nonfinite])


def _summaries(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([_leaf_summary(x) for x in leaves])


def _placement(leaf: jax.Array) -> Mesh | tuple[int, ...]:
    """Where a leaf lives: its mesh, or the ids of its devices when it has none."""
    sharding = leaf.sharding
    return sharding.mesh if isinstance(sharding, NamedSharding) else tuple(sorted(d.id for d in sharding.device_set))


@functools.cache
def _summary_program(placement: Mesh | tuple[int, ...]) -> Callable[[list[jax.Array]], jax.Array]:
    """The one jitted program for leaves at `placement`, its output replicated there."""
    out = NamedSharding(placement, PartitionSpec()) if isinstance(placement, Mesh) else None
    return jax.jit(_summaries, out_shardings=out)


def inspect_state(tree: Any) -> tuple[dict[str, str], list[str]]:
    """`({leaf path: "aaaaaaaa-bbbbbbbb"}, [paths of leaves holding nan/inf])` for every
    array leaf of `tree`. One program per set of devices the leaves live on (one for a
    train state); every host calls it with the same tree and gets the same answer."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(path) for path, _ in flat]
    leaves = [leaf for _, leaf in flat]
    summary = np.zeros((len(leaves), 3), dtype=np.uint32)
    groups: dict[Mesh | tuple[int, ...], list[int]] = {}
    for position, leaf in enumerate(leaves):
        groups.setdefault(_placement(leaf), []).append(position)
    for placement, positions in groups.items():
        summary[positions] = jax.device_get(_summary_program(placement)([leaves[p] for p in positions]))
    checksums = {path: f"{int(a):08x}-{int(b):08x}" for path, (a, b, _) in zip(paths, summary)}
    return checksums, [path for path, (_, _, bad) in zip(paths, summary) if bad]


def saved_checksums(meta: dict, *, where: str) -> dict[str, str] | None:
    """The checksums a checkpoint's metadata holds, or None for one written before there
    were checksums. A format this harness does not know is a usage error (a newer
    podharness wrote it): nothing can be verified, and nothing is damaged."""
    if "checksums" not in meta:
        return None
    saved_format = meta.get("checksum_format", 1)  # written before the format was recorded
    if saved_format != CHECKSUM_FORMAT:
        raise UsageError(f"cannot verify {where}: its checksums are in format {saved_format!r}, this podharness "
                         f"reads format {CHECKSUM_FORMAT} (was it written by a newer version?)")
    return meta["checksums"]


def mismatched_leaves(saved: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Leaf paths whose checksum differs, or that only one side has."""
    return sorted(path for path in saved.keys() | actual.keys() if saved.get(path) != actual.get(path))
