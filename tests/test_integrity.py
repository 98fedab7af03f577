"""Checkpoint checksums (harness/runtime/integrity.py) against an oracle written from the
definition, element by element in plain Python; the same bits on every sharding and mesh;
any one changed element always detected; computed on the devices (one program, one
combined all-reduce, no implicit copy to the host); a checkpoint saved on 1x8 verified on
2x4; a record in an unknown format refused clearly.

    .venv/bin/python -m pytest -q tests/test_integrity.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from harness.config import TrainConfig
from harness.errors import UsageError
from harness.runtime import integrity
from harness.runtime.checkpoint import CheckpointStore
from harness.runtime.integrity import CHECKSUM_FORMAT, inspect_state, mismatched_leaves, saved_checksums
from harness.runtime.mesh import make_mesh
from harness.train.step import init_state

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


def _mesh(data: int = 2, fsdp: int = 4) -> Mesh:
    return Mesh(np.asarray(jax.devices()).reshape(data, fsdp), ("data", "fsdp"))


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint32, np.bool_, np.float16, jnp.bfloat16, np.uint8])
def test_checksum_matches_the_oracle(dtype):
    values = (np.random.default_rng(0).standard_normal((6, 10)) * 100).astype(dtype)

    checksums, nonfinite = inspect_state({"x": jnp.asarray(values)})

    assert checksums == {"['x']": oracle(np.asarray(values))}
    assert nonfinite == []


@pytest.mark.parametrize("spec", [P(), P("fsdp"), P(None, "fsdp"), P("data", "fsdp"), P(("data", "fsdp")),
                                  P("fsdp", "data")])
@pytest.mark.parametrize("mesh_shape", [(2, 4), (1, 8), (4, 2)])
def test_checksum_does_not_depend_on_the_sharding(spec, mesh_shape):
    values = np.random.default_rng(1).standard_normal((16, 24)).astype(np.float32)
    sharded = jax.device_put(values, NamedSharding(_mesh(*mesh_shape), spec))

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


def test_non_finite_bfloat16_and_float16_leaves_are_named():
    spec = NamedSharding(_mesh(), P("fsdp"))
    bf16 = np.ones((8, 4), jnp.bfloat16)
    bf16[5, 1] = np.nan
    f16 = np.ones((8,), np.float16)
    f16[7] = np.inf
    tree = {"bf16": jax.device_put(bf16, spec), "f16": jax.device_put(f16, spec),
            "bf16_ok": jax.device_put(np.ones((8,), jnp.bfloat16), spec)}

    assert inspect_state(tree)[1] == ["['bf16']", "['f16']"]


def test_a_train_state_is_checked_in_one_program_with_one_all_reduce_and_no_implicit_copy():
    mesh = make_mesh(4)
    state = init_state(TrainConfig().replace(batch_size=16, fsdp_devices=4, hidden_dim=32, image_size=32), mesh)
    leaves = jax.tree.leaves(state)
    program = integrity._sharded_program(mesh, tuple((x.shape, x.sharding.spec) for x in leaves))
    text = program.lower(leaves).compile().as_text()
    collectives = [line for line in text.splitlines()
                   if re.search(r"= .*\b(all-reduce|all-gather|reduce-scatter|all-to-all)(-start)?\(", line)]

    with jax.transfer_guard_device_to_host("disallow"):  # a hidden copy of the state would raise
        checksums, nonfinite = inspect_state(state)

    assert len(leaves) > 30 and len(collectives) == 1 and "all-reduce" in collectives[0], collectives
    assert len(checksums) == len(leaves) and nonfinite == []


def _small_state(mesh: Mesh) -> dict[str, jax.Array]:
    rng = np.random.default_rng(3)
    values = {"w": rng.standard_normal((16, 8)).astype(np.float32), "b": rng.standard_normal((8,)).astype(jnp.bfloat16),
              "step": np.asarray(4, np.int32)}
    specs = {"w": P("fsdp"), "b": P("fsdp"), "step": P()}
    return {name: jax.device_put(v, NamedSharding(mesh, specs[name])) for name, v in values.items()}


def _abstract(state: dict[str, jax.Array], mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    specs = {"w": P(None, "fsdp"), "b": P("fsdp"), "step": P()}
    return {name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, specs[name]))
            for name, x in state.items()}


def _restore(directory: Path, target) -> tuple:
    store = CheckpointStore(str(directory), keep=2, async_save=False)
    skipped = []
    try:
        return store.restore_latest(target, lambda step, meta: None, lambda step, why: skipped.append(why)), skipped
    finally:
        store.close()


def test_a_checkpoint_saved_on_1x8_verifies_on_2x4_and_a_flipped_bit_is_named(tmp_path):
    saved = _small_state(_mesh(1, 8))
    store = CheckpointStore(str(tmp_path), keep=2, async_save=False)
    store.save(4, saved, {"step": 4})
    store.close()

    (restored, meta), skipped = _restore(tmp_path, _abstract(saved, _mesh(2, 4)))
    damaged = np.asarray(restored["b"]).copy()
    damaged.view(np.uint16)[3] ^= 1 << 9
    restored["b"] = jax.device_put(damaged, restored["b"].sharding)

    assert skipped == [] and meta["checksum_format"] == CHECKSUM_FORMAT
    assert restored["w"].sharding.mesh.devices.shape == (2, 4)
    assert mismatched_leaves(saved_checksums(meta, where="here"), inspect_state(restored)[0]) == ["['b']"]


def test_checksums_in_an_unknown_format_are_refused_and_an_unversioned_record_is_read(tmp_path):
    saved = _small_state(_mesh(1, 8))
    store = CheckpointStore(str(tmp_path), keep=2, async_save=False)
    store.save(4, saved, {"step": 4})
    store.close()
    meta_file = tmp_path / "4" / "meta" / "metadata"
    record = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**record, "checksum_format": 2}))

    with pytest.raises(UsageError) as refused:
        _restore(tmp_path, _abstract(saved, _mesh(2, 4)))
    del record["checksum_format"]  # as written before the format was recorded
    meta_file.write_text(json.dumps(record))
    (_, meta), skipped = _restore(tmp_path, _abstract(saved, _mesh(2, 4)))

    assert str(refused.value) == (f"cannot verify {tmp_path} step 4: its checksums are in format 2, this "
                                  "podharness reads format 1 (was it written by a newer version?)")
    assert skipped == [] and "checksum_format" not in meta
    assert saved_checksums({}, where="x") is None


def test_mismatched_leaves_names_changed_missing_and_extra_paths():
    assert mismatched_leaves({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"}) == ["b", "c", "d"]
