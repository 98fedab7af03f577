"""Cross-host gathers (harness/runtime/collectives.py): exact payloads on simulated hosts,
every gather across two real processes, the one module that calls JAX's gathers, and a
bounded number of compiled gather programs in a real 2x4 training run.

    .venv/bin/python -m pytest -q tests/test_collectives.py
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding

from harness.runtime.collectives import (
    FIRST_PAYLOAD_BYTES,
    FIRST_ROUND_BYTES,
    allgather_bytes,
    allgather_ints,
    allgather_rows,
    padded_width,
)
from harness.runtime.integrity import inspect_state
from tests.support import collectives_script
from tests.support.runs import REPO_ROOT, compile_cache_flags, failure_report, harness_env, host_lines, launch_local
from tests.support.thread_pod import ThreadPod
from tests.test_integrity import oracle

SIMULATED_HOSTS = 3
BARRIER_TIMEOUT_S = 30
POD_TIMEOUT_S = 180
JAX_GATHERS = re.compile(r"\b(process_allgather|broadcast_one_to_all|sync_global_devices|assert_equal)\b")


def simulated_pod(payloads: list[bytes], max_payload_bytes: int) -> tuple[list, list[list[int]]]:
    """Every simulated host's `allgather_bytes` result, and the row widths it gathered."""
    pod = ThreadPod(SIMULATED_HOSTS, BARRIER_TIMEOUT_S)
    results = pod.run(lambda host: allgather_bytes(payloads[host], max_payload_bytes=max_payload_bytes,
                                                   allgather=pod.allgather_for(host)))
    return results, [[math.prod(shape) for _, shape in calls] for calls in pod.calls]


def test_the_padded_widths_are_a_small_fixed_ladder():
    cap = 64 << 20
    sizes = [*range(0, 5000), *range(5000, cap + 1, 9973), cap - 1, cap]

    widths = {padded_width(n) for n in sizes}

    assert widths == {FIRST_ROUND_BYTES << k for k in range(17)}  # 1 KiB .. 64 MiB: 17 programs at most
    assert all(n <= padded_width(n) < max(2 * n, FIRST_ROUND_BYTES + 1) for n in sizes)


@pytest.mark.parametrize(("lengths", "expected_widths"), [
    ((0, 0, 0), [1024]),
    ((FIRST_PAYLOAD_BYTES, 1, 0), [1024]),
    ((FIRST_PAYLOAD_BYTES + 1, 0, 7), [1024, 1024]),
    ((5000, 3, 70_000), [1024, 131072]),
    ((5000, 200_001, 12), [1024, 4096]),  # host 1 is over the limit: it sends nothing, and its rest is not waited for
])
def test_every_host_receives_every_payload_exactly(lengths, expected_widths):
    rng = np.random.default_rng(list(lengths))
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]

    results, widths = simulated_pod(payloads, max_payload_bytes=200_000)

    expected = [p if len(p) <= 200_000 else None for p in payloads]
    assert [received for received, _ in results] == [expected] * SIMULATED_HOSTS
    assert widths == [expected_widths] * SIMULATED_HOSTS
    assert [sent for _, sent in results] == [sum(expected_widths)] * SIMULATED_HOSTS


def test_one_process_gathers_without_collectives():
    assert allgather_rows(np.asarray([[1.5, 2.0]], np.float32)).tolist() == [[1.5, 2.0]]
    assert allgather_rows(np.asarray([True, False])).dtype == np.bool_
    assert allgather_ints([3, 2**40]).tolist() == [[3, 2**40]]
    assert allgather_bytes(b"abc", max_payload_bytes=3) == ([b"abc"], FIRST_ROUND_BYTES)
    assert allgather_bytes(b"abcd", max_payload_bytes=3) == ([None], FIRST_ROUND_BYTES)


def test_no_module_but_collectives_calls_jax_gathers():
    callers = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for package in ("harness", "launch")
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if path.relative_to(REPO_ROOT).as_posix() != "harness/runtime/collectives.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if JAX_GATHERS.search(line)
    ]
    assert callers == [], "call JAX's gathers through harness/runtime/collectives.py only:\n" + "\n".join(callers)


# ---------------------------------------------------------------------------------------
# Two real processes x 4 devices.

@pytest.fixture(scope="module")
def pod_results() -> list[dict]:
    result = launch_local(2, 4, [sys.executable, "-m", "tests.support.collectives_script"], timeout=POD_TIMEOUT_S)
    assert result.returncode == 0, failure_report(result)
    lines = [[json.loads(line[len("RESULT "):]) for line in host_lines(result.stdout, h) if line.startswith("RESULT ")]
             for h in range(2)]
    assert [len(found) for found in lines] == [1, 1], failure_report(result)
    return [found[0] for found in lines]


def test_every_host_gets_the_same_answers(pod_results):
    first, second = ({k: v for k, v in r.items() if k != "host"} for r in pod_results)

    assert [r["host"] for r in pod_results] == [0, 1]
    assert first == second
    assert first["rows"] == [[0.0, 0.0], [1.5, -1.0]]
    assert first["ints"] == [[0, 2**40], [1, 2**40 + 1]]
    assert first["json"] == [{"host": 0, "position": [0, 3]}, {"host": 1, "position": [1, 3]}]
    assert (first["problem"], first["no_problem"]) == ("host 1: disk full", None)


def test_every_payload_arrives_whole_across_processes(pod_results):
    for call, lengths in enumerate(collectives_script.PAYLOAD_LENGTHS):
        expected = [collectives_script.payload(h, call, n).hex() if n <= collectives_script.PAYLOAD_LIMIT else None
                    for h, n in enumerate(lengths)]
        assert pod_results[0]["bytes"][call]["received"] == expected, f"call {call}"


def test_state_checksums_on_a_2x4_pod_equal_the_oracle_and_a_1x8_mesh(pod_results):
    values = collectives_script.state_values()
    mesh_1x8 = Mesh(np.asarray(jax.devices()).reshape(1, 8), ("data", "fsdp"))
    here = {name: jax.device_put(v, NamedSharding(mesh_1x8, collectives_script.SPECS[name])) for name, v in values.items()}

    assert pod_results[0]["checksums"] == {f"['{name}']": oracle(v) for name, v in values.items()}
    assert inspect_state(here) == (pod_results[0]["checksums"], pod_results[0]["nonfinite"])
    assert pod_results[0]["nonfinite"] == ["['bf16_nan']"]


# ---------------------------------------------------------------------------------------
# Compiled gather programs in a real 2x4 training run.

def gather_compiles(tmp: Path, steps: int) -> tuple[int, int]:
    """Host 0's compiles of JAX's gather program, and of all programs, in a 2x4 run of
    `steps` steps that gathers hard examples after every step and records per-sample
    losses (another gather per step)."""
    root = tmp / f"steps_{steps}"
    result = launch_local(
        2, 4,
        [sys.executable, "-m", "harness.train", "--config", "local-2x4", "--num_train_steps", str(steps),
         "--hard_example_log_interval", "1", "--record_per_sample_losses", "--no_wandb",
         "--checkpoint_dir", str(root / "ckpt"), "--run_dir", str(root / "run"), "--overwrite",
         *compile_cache_flags(tmp / "cache")],
        timeout=POD_TIMEOUT_S, env=harness_env(JAX_LOG_COMPILES="1"),
    )
    assert result.returncode == 0, failure_report(result)
    compiles = [line for line in host_lines(result.stdout + result.stderr, 0) if "Finished XLA compilation of" in line]
    return sum("jit(_identity_fn)" in line for line in compiles), len(compiles)


def test_gather_programs_do_not_grow_with_the_number_of_intervals(tmp_path):
    gathers_4, all_4 = gather_compiles(tmp_path, 4)
    gathers_16, all_16 = gather_compiles(tmp_path, 16)

    # Before collectives.py: 13 and 24 gather programs (47 and 58 in all).
    assert gathers_4 == gathers_16 <= 6, f"gather programs {gathers_4} vs {gathers_16}; all {all_4} vs {all_16}"
