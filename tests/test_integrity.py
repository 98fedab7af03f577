"""Checkpoint checksums (harness/runtime/integrity.py) against an oracle written from the
definition, element by element in plain Python; the same bits on every sharding; any one
changed element always detected.

    .venv/bin/python -m pytest -q tests/test_integrity.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from harness.runtime.integrity import inspect_state, mismatched_leaves

MASK = 0xFFFFFFFF


def oracle(values: np.ndarray) -> str:
    """The module docstring's formula, one element at a time."""
    if values.dtype == np.bool_:
        words = [int(v) for v in values.reshape(-1)]
    else:
        unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[values.dtype.itemsize]
        words = [int(v) for v in values.reshape(-1).view(unsigned)]
    a = b = 0
    for i, x in enumerate(words):
        mixed = ((i ^ (i >> 16)) * 0x9E3779B9) & MASK
        a = (a + x * (2 * i + 1)) & MASK
        b = (b + (x ^ mixed) * (2 * mixed + 1)) & MASK
    return f"{a:08x}-{b:08x}"


def _mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()).reshape(2, 4), ("data", "fsdp"))


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint32, np.bool_, np.float16, jnp.bfloat16, np.uint8])
def test_checksum_matches_the_oracle(dtype):
    values = (np.random.default_rng(0).standard_normal((6, 10)) * 100).astype(dtype)

    checksums, nonfinite = inspect_state({"x": jnp.asarray(values)})

    assert checksums == {"['x']": oracle(np.asarray(values))}
    assert nonfinite == []


@pytest.mark.parametrize("spec", [P(), P("fsdp"), P(None, "fsdp"), P("data", "fsdp"), P(("data", "fsdp")),
                                  P("fsdp", "data")])
def test_checksum_does_not_depend_on_the_sharding(spec):
    values = np.random.default_rng(1).standard_normal((16, 24)).astype(np.float32)
    sharded = jax.device_put(values, NamedSharding(_mesh(), spec))

    assert inspect_state([sharded]) == inspect_state([jnp.asarray(values)])
    assert inspect_state([sharded])[0] == {"[0]": oracle(values)}


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 16 * 24 - 1), byte=st.integers(0, 3), bit=st.integers(0, 7))
def test_any_single_flipped_bit_changes_the_checksum(position, byte, bit):
    values = np.random.default_rng(2).standard_normal((16, 24)).astype(np.float32)
    damaged = values.copy()
    damaged.reshape(-1).view(np.uint8)[4 * position + byte] ^= 1 << bit
    spec = NamedSharding(_mesh(), P("fsdp", "data"))

    before = inspect_state({"w": jax.device_put(values, spec)})[0]
    after = inspect_state({"w": jax.device_put(damaged, spec)})[0]

    assert mismatched_leaves(before, after) == ["['w']"]


def test_non_finite_leaves_are_named():
    tree = {"ok": jnp.ones((4,)), "nan": jnp.asarray([0.0, jnp.nan]), "inf": jnp.asarray([-jnp.inf]),
            "int": jnp.arange(3)}

    _, nonfinite = inspect_state(tree)

    assert nonfinite == ["['inf']", "['nan']"]


def test_mismatched_leaves_names_changed_missing_and_extra_paths():
    assert mismatched_leaves({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"}) == ["b", "c", "d"]
