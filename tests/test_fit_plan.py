"""harness-fit's checkpoint plan and bill against hand arithmetic: the bytes each host
writes (the state's shapes and shardings on a real TPU topology's compile-only devices,
split as orbax splits them), the save time, Young's interval and the time lost, the
write throughput read from a real preflight.json's fields, and the cost of 1,000 steps.
No compiles.

    .venv/bin/python -m pytest -q tests/test_fit_plan.py
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from harness.config import load_preset
from harness.errors import UsageError
from harness.fit.economics import PRICES, Assumptions, StepCost, step_cost
from harness.fit.libtpu import topology_devices
from harness.fit.plan import CheckpointBytes, SavePlan, StorageThroughput, checkpoint_bytes, throughput_from_preflight
from harness.fit.roofline import StepTimeBound
from harness.fit.topology import resolve
from harness.preflight.schema import PREFLIGHT_SCHEMA
from harness.runtime.mesh import make_mesh
from harness.train.step import abstract_state, build_model


@pytest.fixture(scope="module")
def v5e_16():
    """16 compile-only v5e chips on 4 hosts (process_index 0-3), 4 per host."""
    jax.config.update("jax_platforms", "cpu")
    return topology_devices(resolve("v5litepod-16"))


def _leaf(shape, dtype, mesh, spec) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=NamedSharding(mesh, spec))


def test_sharded_leaves_split_evenly_over_the_hosts(v5e_16):
    mesh = make_mesh(16, v5e_16)  # data=1, fsdp=16: every device holds a different 64x256 slab
    state = {"w": _leaf((1024, 256), "float32", mesh, P(None, "fsdp"))}

    plan = checkpoint_bytes(state)

    assert plan.total == 1024 * 256 * 4
    assert plan.per_host == {host: 1024 * 256 * 4 // 4 for host in range(4)}


def test_replicas_share_a_shard_where_a_dimension_divides_and_replica_0_writes_it_otherwise(v5e_16):
    """data=4 x fsdp=4: each 256x256 shard of `w` is held by 4 devices, which write a
    quarter each (256 % 4 == 0). A (3, 5) leaf held by all 16 devices splits no way:
    the first device of the mesh writes all 60 bytes, and so does its host."""
    mesh = make_mesh(4, v5e_16)
    first_host = mesh.devices.flat[0].process_index
    state = {"w": _leaf((1024, 256), "float32", mesh, P("fsdp", None)),
             "odd": _leaf((3, 5), "float32", mesh, P()),
             "step": _leaf((), "int32", mesh, P())}

    plan = checkpoint_bytes(state)

    expected = {host: 1024 * 256 * 4 // 4 for host in range(4)}
    expected[first_host] += 3 * 5 * 4 + 4
    assert plan.per_host == expected and plan.total == 1024 * 256 * 4 + 60 + 4
    assert sum(plan.per_host.values()) == plan.total  # every byte written once


def test_the_1b_transformers_checkpoint_is_12_bytes_a_parameter_split_over_4_hosts(v5e_16):
    """float32 params, Adam's mu and nu: 12 B per parameter, every 1b weight split 16
    ways; the train step, Adam's and the schedule's int32 counts (3 x 4 B) and the
    uint32[2] rng key are replicated and unsplittable: the first device's host writes them."""
    config = load_preset("v5litepod-16").replace(model="transformer", model_size="1b", fsdp_devices=16)
    mesh = make_mesh(16, v5e_16)
    params = build_model(config).param_count()

    plan = checkpoint_bytes(abstract_state(config, mesh))

    assert plan.total == 12 * params + 3 * 4 + 8
    first_host = mesh.devices.flat[0].process_index
    assert plan.per_host == {host: 3 * params + (20 if host == first_host else 0) for host in range(4)}


def test_save_time_interval_and_lost_time_by_hand():
    """2 GB from the busiest host at 200 MB/s: C = 10 s. MTBF 24 h: M = 86,400 s.
    tau = sqrt(2 * 10 * 86,400) = 1,314.53 s; saves lose 10 / 1,314.53 = 0.7607% and
    rework 1,314.53 / 172,800 = 0.7607%; together sqrt(2 * 10 / 86,400) = 1.5215%.
    At an estimated 0.5 s a step that is a save every 2,629 steps."""
    plan = SavePlan(CheckpointBytes(total=5_000_000_000, per_host={0: 2_000_000_000, 1: 1_500_000_000}),
                    StorageThroughput(200.0, "--storage_mbps"), mtbf_s=24 * 3600, step_s=0.5)

    assert plan.save_s == pytest.approx(10.0)
    assert plan.interval_s == pytest.approx(1314.534138, rel=1e-9)
    assert plan.lost_to_saves == pytest.approx(0.0076073, rel=1e-4)
    assert plan.lost_to_rework == pytest.approx(0.0076073, rel=1e-4)
    assert plan.lost_to_saves + plan.lost_to_rework == pytest.approx(math.sqrt(2 * 10 / 86400))
    assert plan.interval_steps == 2629
    assert SavePlan(plan.bytes, None, 86400, 0.5).save_s is None  # no throughput: bytes only


def _preflight_report(write_mb_per_s: list[float]) -> dict:
    """A preflight.json as harness-preflight writes it (checked against its schema)."""
    cells = [{"host": h, "status": "PASS", "value": f"w {w:.0f} MB/s", "detail": "...", "seconds": 1.0,
              "metrics": {"bytes": 1e8, "write_s": 1e8 / 1e6 / w, "read_s": 0.2, "write_mb_per_s": w,
                          "read_mb_per_s": 500.0}} for h, w in enumerate(write_mb_per_s)]
    return {
        "schema": "podharness.preflight/1", "verdict": "PASS", "exit_code": 0, "summary": "", "created_utc": "",
        "run_id": "r", "config": {"preset": None, "hash": None},
        "pod": {"num_processes": len(cells), "coordinator_address": None, "mesh": {"data": 1}, "platform": None,
                "device_kind": None},
        "testing_fault": None, "aborted": None,
        "hosts": [{"host": h, "hostname": None, "pid": None} for h in range(len(cells))],
        "checks": [{"check": "storage throughput", "status": "PASS", "cells": cells}], "failures": [],
        "consistency": {"pod": {}, "hosts": {}}, "slow_host_factor": 2.0,
        "storage_throughput": {"hosts": len(cells), "bytes": 1e8 * len(cells),
                               "write_mb_per_s": 1e8 * len(cells) / 1e6 / max(1e8 / 1e6 / w for w in write_mb_per_s),
                               "read_mb_per_s": 400.0},
        "interconnect": {"straggler_factor": 2.0, "published_ici_gbytes_per_s": None, "measurements": []},
    }


def test_the_write_throughput_is_the_slowest_hosts_from_preflight_json(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    report = _preflight_report([410.0, 180.5, 395.0])
    jsonschema.validate(report, PREFLIGHT_SCHEMA)
    path = tmp_path / "preflight.json"
    path.write_text(json.dumps(report))

    throughput = throughput_from_preflight(str(path))

    assert throughput.write_mb_per_s == 180.5
    assert throughput.source == f"{path}: the slowest of 3 host(s), host 1"


def test_preflight_json_without_a_throughput_or_unreadable_is_bad_input(tmp_path):
    report = _preflight_report([100.0])
    report["checks"], report["storage_throughput"] = [], None
    path = tmp_path / "preflight.json"
    path.write_text(json.dumps(report))
    with pytest.raises(UsageError, match="has no storage throughput"):
        throughput_from_preflight(str(path))
    with pytest.raises(UsageError, match="cannot read it"):
        throughput_from_preflight(str(tmp_path / "absent.json"))


def test_the_bill_for_1000_steps_by_hand():
    """v5litepod-16: 16 chips at the table's $1.20. A compute-bound 0.2 s step at MFU
    0.4 is an estimated 0.5 s: 1,000 steps = 16 x 1.20 x 500 s / 3,600 = $2.6667."""
    bound = StepTimeBound(flops_per_step=0, flops_per_device=0, flops_source="analytic", compute_s=0.2,
                          hbm_bytes_per_device=0, memory_s=0.01)
    cost = step_cost(bound, resolve("v5litepod-16"), Assumptions(mfu=0.4))

    assert (cost.estimate_s, cost.chips, cost.price) == (0.5, 16, PRICES["v5litepod"])
    assert cost.usd_per_1000_steps == pytest.approx(16 * 1.20 * 500 / 3600)
    v4 = step_cost(bound, resolve("v4-32"), Assumptions(mfu=0.4, price_per_chip_hour=2.0))
    assert v4.chips == 16 and v4.usd_per_1000_steps == pytest.approx(16 * 2.0 * 500 / 3600)  # v4-32: 16 chips
    memory_bound = StepTimeBound(0, 0, "analytic", compute_s=0.01, hbm_bytes_per_device=0, memory_s=0.3)
    assert step_cost(memory_bound, resolve("v6e-8"), Assumptions()).estimate_s == 0.3  # MFU does not slow HBM


@pytest.mark.parametrize("changes, message", [
    (dict(mfu=0.0), "--mfu must be in (0, 1], got 0"),
    (dict(mfu=1.5), "--mfu must be in (0, 1], got 1.5"),
    (dict(price_per_chip_hour=-1.0), "--price_per_chip_hour must be positive, got -1"),
    (dict(mtbf_hours=0.0), "--mtbf_hours must be positive, got 0"),
])
def test_assumptions_out_of_range_are_bad_input(changes, message):
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Assumptions(**changes)


def test_every_family_has_a_dated_price_with_its_source():
    from harness.fit.topology import FAMILIES

    assert set(PRICES) == set(FAMILIES)
    assert all(p.usd_per_chip_hour > 0 and p.source for p in PRICES.values())
    assert isinstance(StepCost(1.0, 0.4, 1, PRICES["v4"]).to_dict()["prices_as_of"], str)
    assert np.isclose(StepCost(3600.0, 0.4, 2, PRICES["v4"]).usd_per_1000_steps, 2 * 3.22 * 1000)
