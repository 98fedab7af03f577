"""Checkpoints in a gs:// bucket through the real CLI: pruning, exact resume (one process
and a 2x4 local pod), transient storage faults, and a half-written step left in the bucket.

    .venv/bin/python -m pytest -q tests/test_gcs_checkpoints.py
    .venv/bin/python -m pytest -q -m soak tests/test_gcs_checkpoints.py   # 2x4 pods, a save failing on one host

The GCS emulator (fake-gcs-server) is a subprocess of the session and the harness runs as
a subprocess; they meet over 127.0.0.1 (HARNESS_GCS_EMULATOR). Runs talk to the emulator
directly; only the transient-fault runs go through a FaultProxy (threads of pytest).
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from functools import partial
from typing import TYPE_CHECKING

import pytest

from harness.outputs.sinks import read_metrics
from tests.support.argv import pod_command, train_args
from tests.support.deny_storage import deny_server
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.runs import failure_report, harness_env, launch_local, run_harness, uninterrupted_rows

if TYPE_CHECKING:
    from tests.support.gcs_emulator import GcsEmulator

pytest_plugins = ["tests.support.gcs_emulator"]  # the session's `gcs_emulator` fixture

RUN_TIMEOUT_S = 240
POD_TIMEOUT_S = 150  # a pod run here takes ~15 s
SAVE_FAILURE_ENDS_WITHIN_S = 90
PREFIX = "gcs_checkpoints"  # this module's corner of the session's bucket
MARKER = "commit_success.txt"


# A run's checkpoints go to `checkpoint_dir=` in the bucket, its outputs to ROOT/run.
run_args = partial(train_args, log_interval=1, no_hard_examples=True)
pod_run = partial(pod_command, log_interval=1, no_hard_examples=True)


def committed_steps(names: list[str], prefix: str) -> list[int]:
    """Steps with a top-level commit marker among the object `names` under `prefix`/."""
    steps = []
    for name in names:
        step, _, rest = name.removeprefix(prefix + "/").partition("/")
        if rest == MARKER and step.isdigit():
            steps.append(int(step))
    return sorted(steps)


def top_level(names: list[str], prefix: str) -> set[str]:
    return {name.removeprefix(prefix + "/").split("/")[0] for name in names}


def _object_url(emulator: GcsEmulator, name: str) -> str:
    return f"{emulator.url}/download/storage/v1/b/{emulator.bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"


def copy_object(emulator: GcsEmulator, source: str, target: str) -> None:
    """Copies one object's bytes through the emulator's JSON API."""
    with urllib.request.urlopen(_object_url(emulator, source), timeout=30) as response:
        payload = response.read()
    upload = urllib.request.Request(
        f"{emulator.url}/upload/storage/v1/b/{emulator.bucket}/o?uploadType=media"
        f"&name={urllib.parse.quote(target, safe='')}",
        data=payload, method="POST", headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(upload, timeout=30):
        pass


@pytest.fixture(scope="module")
def gcs(gcs_emulator: GcsEmulator):
    """The emulator, and the harness environment that points at it."""
    return gcs_emulator, harness_env(HARNESS_GCS_EMULATOR=gcs_emulator.url)


# ---------------------------------------------------------------------------------------
# One process: 12 steps saving every 4 and keeping 2; a half-written step 99 is planted;
# a run without --resume is refused; --resume continues to 16.

@pytest.fixture(scope="module")
def bucket_run(gcs, cache, tmp_path_factory):
    emulator, env = gcs
    root = tmp_path_factory.mktemp("bucket_run")
    prefix = f"{PREFIX}/run1"
    directory = f"gs://{emulator.bucket}/{prefix}"
    first = run_harness(run_args(root, cache, "--num_train_steps", "12", "--save_interval", "4", "--keep", "2",
                                 checkpoint_dir=directory), timeout=RUN_TIMEOUT_S, env=env)
    assert first.returncode == 0, failure_report(first)
    after_first = emulator.object_names(prefix + "/")

    # A save that died before its commit markers: step 8's objects (its state says step 8,
    # so a resume that took it would show) without any commit_success.txt.
    for name in after_first:
        if name.startswith(f"{prefix}/8/") and not name.endswith(MARKER):
            copy_object(emulator, name, name.replace(f"{prefix}/8/", f"{prefix}/99/", 1))
    planted = emulator.object_names(f"{prefix}/99/")

    refused = run_harness(run_args(root, cache, "--num_train_steps", "16", checkpoint_dir=directory),
                          timeout=RUN_TIMEOUT_S, env=env)
    resumed = run_harness(run_args(root, cache, "--num_train_steps", "16", "--save_interval", "4", "--keep", "2",
                                   "--resume", checkpoint_dir=directory), timeout=RUN_TIMEOUT_S, env=env)
    return {"prefix": prefix, "directory": directory, "root": root, "after_first": after_first,
            "planted": planted, "refused": refused, "resumed": resumed,
            "after_resume": emulator.object_names(prefix + "/")}


def test_bucket_keeps_only_the_newest_committed_steps(bucket_run):
    prefix, names = bucket_run["prefix"], bucket_run["after_first"]

    assert committed_steps(names, prefix) == [8, 12]
    assert top_level(names, prefix) == {"8", "12"}  # step 4 pruned, the write probe gone
    for step in (8, 12):
        assert {f"{prefix}/{step}/state/{MARKER}", f"{prefix}/{step}/meta/{MARKER}"} <= set(names)


def test_resume_from_the_bucket_continues_bit_for_bit(bucket_run, cache):
    resumed = bucket_run["resumed"]
    reference = uninterrupted_rows("1x8", 16, workdir=bucket_run["root"] / "reference",
                                   extra_args=tuple(cache))

    assert resumed.returncode == 0, failure_report(resumed)
    assert "Resumed from checkpoint at step 12" in resumed.stdout.splitlines()
    rows = read_metrics(bucket_run["root"] / "run" / "metrics.jsonl")
    assert rows[12:] == reference[12:]  # the resumed steps, exactly
    assert rows == reference
    assert committed_steps(bucket_run["after_resume"], bucket_run["prefix"]) == [12, 16]


def test_half_written_step_is_neither_counted_nor_resumed(bucket_run):
    prefix, refused, resumed = bucket_run["prefix"], bucket_run["refused"], bucket_run["resumed"]

    assert bucket_run["planted"], "nothing was planted under step 99"
    # Not counted: the refusal names the newest committed step, 12.
    assert refused.returncode == 2, failure_report(refused)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("harness-train:")]
    assert errors == [f"harness-train: error: {bucket_run['directory']} already holds checkpoints "
                      "(latest step 12): pass --resume to continue or --overwrite to start over"]
    # Not resumed, not even tried, and left alone.
    assert resumed.returncode == 0, failure_report(resumed)
    assert "Resumed from checkpoint at step 12" in resumed.stdout.splitlines()
    assert not [line for line in resumed.stdout.splitlines() if line.startswith("WARNING")], resumed.stdout
    assert [n for n in bucket_run["after_resume"] if n.startswith(f"{prefix}/99/")] == bucket_run["planted"]


# ---------------------------------------------------------------------------------------
# A 2x4 local pod: both hosts write their shards of a step into the bucket. Soak: two pods
# and a 2x4 reference run take ~50 s on 2 cores.

@pytest.fixture(scope="module")
def pod_bucket_run(gcs, cache, tmp_path_factory):
    emulator, env = gcs
    root = tmp_path_factory.mktemp("pod_bucket_run")
    prefix = f"{PREFIX}/pod"
    directory = f"gs://{emulator.bucket}/{prefix}"
    first = launch_local(2, 4, pod_run(root, cache, "--num_train_steps", "4", "--save_interval", "4",
                                       checkpoint_dir=directory), timeout=POD_TIMEOUT_S, env=env)
    after_first = emulator.object_names(prefix + "/")
    resumed = None
    if first.returncode == 0:
        resumed = launch_local(2, 4, pod_run(root, cache, "--num_train_steps", "8", "--save_interval", "4", "--resume",
                                             checkpoint_dir=directory), timeout=POD_TIMEOUT_S, env=env)
    return {"prefix": prefix, "root": root, "first": first, "after_first": after_first, "resumed": resumed,
            "after_resume": emulator.object_names(prefix + "/")}


@pytest.mark.soak
def test_pod_saves_every_hosts_shards_to_the_bucket(pod_bucket_run):
    first, prefix, names = pod_bucket_run["first"], pod_bucket_run["prefix"], pod_bucket_run["after_first"]

    assert first.returncode == 0, failure_report(first)
    assert committed_steps(names, prefix) == [4]
    state = f"{prefix}/4/state/"
    shards = {name.removeprefix(state).split("/")[0] for name in names if name.startswith(state + "ocdbt.")}
    assert shards == {"ocdbt.process_0", "ocdbt.process_1"}


@pytest.mark.soak
def test_pod_resume_from_the_bucket_continues_bit_for_bit(pod_bucket_run, cache):
    resumed = pod_bucket_run["resumed"]
    assert resumed is not None, "the first pod run failed"
    reference = uninterrupted_rows("2x4", 8, workdir=pod_bucket_run["root"] / "reference",
                                   extra_args=tuple(cache))

    assert resumed.returncode == 0, failure_report(resumed)
    assert "[host 0] Resumed from checkpoint at step 4" in resumed.stdout.splitlines()
    assert read_metrics(pod_bucket_run["root"] / "run" / "metrics.jsonl") == reference
    assert committed_steps(pod_bucket_run["after_resume"], pod_bucket_run["prefix"]) == [4, 8]


@pytest.mark.soak
def test_pod_whose_save_fails_on_one_host_ends_promptly(gcs_emulator, cache, tmp_path):
    """Host 1's array writes are refused (403, not retried), host 0's succeed. The pod
    fails within the heartbeat timeout plus a margin, host 1 saying why, instead of
    sitting in orbax's save barrier until its timeout. Before host 1 listened for the
    failure (harness/runtime/failed_saves.py), about half the tries hung, so three pods
    are tried."""
    # The harness's own switch would point tensorstore at the emulator too; set the
    # clients' variables directly and send host 1's tensorstore to the refusing server.
    env = {key: value for key, value in harness_env(**gcs_emulator.env).items() if key != "HARNESS_GCS_EMULATOR"}
    with deny_server() as deny_url:
        deny_host_1 = f'[ "$HARNESS_PROCESS_ID" = 1 ] && export TENSORSTORE_GCS_HTTP_URL={deny_url}; exec "$@"'
        for attempt in range(3):
            directory = f"gs://{gcs_emulator.bucket}/{PREFIX}/one_host_fails_{attempt}"
            command = ["sh", "-c", deny_host_1, "sh",
                       *pod_run(None, cache, "--num_train_steps", "8", "--save_interval", "4", "--heartbeat_timeout",
                                "10", checkpoint_dir=directory, run_dir=tmp_path / f"run{attempt}")]
            # The launcher stops the pod and exits 124 after SAVE_FAILURE_ENDS_WITHIN_S.
            result = launch_local(2, 4, command, timeout=SAVE_FAILURE_ENDS_WITHIN_S, env=env)

            assert "PERMISSION_DENIED" in result.stdout + result.stderr, failure_report(result)  # it did fail
            assert result.returncode not in (0, 124), f"attempt {attempt}: {failure_report(result)}"
            assert f"[host 1] harness-train: error: host 1: a checkpoint save to {directory} failed: " \
                   "PERMISSION_DENIED" in result.stdout + result.stderr, failure_report(result)
            assert "launch.local: host 1 failed (exit code 1)" in result.stderr, failure_report(result)


# ---------------------------------------------------------------------------------------
# Transient faults on uploads: 503s and dropped connections, absorbed by the clients' retries.

@pytest.fixture(scope="module")
def faulty_run(gcs_emulator: GcsEmulator, cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty_run")
    prefix = f"{PREFIX}/faults"
    directory = f"gs://{gcs_emulator.bucket}/{prefix}"
    with FaultProxy(gcs_emulator.url, timeout_s=30) as proxy:
        env = harness_env(HARNESS_GCS_EMULATOR=proxy.url)
        # tensorstore uploads array data with a percent-encoded name; gcsfs uploads the
        # metadata and the commit markers (resumable uploads) with a plain one.
        array_data = "name=" + urllib.parse.quote(f"{prefix}/4/state/ocdbt.process_0/d/", safe="")
        # One of each kind on array data: tensorstore's backoff (1 s, doubling) is not
        # settable from the command line, and each fault on the same upload doubles it.
        rules = [
            proxy.add_rule(Fault.UNAVAILABLE, method="POST", path=array_data, count=1),
            proxy.add_rule(Fault.DROP, method="POST", path=array_data, count=1),
            proxy.add_rule(Fault.DROP_AFTER_FORWARD, method="POST", path=array_data, count=1),
            proxy.add_rule(Fault.UNAVAILABLE, method="POST", path=f"name={prefix}/4/{MARKER}&uploadType=resumable"),
            proxy.add_rule(Fault.DROP, method="POST", path=f"name={prefix}/4/meta/metadata&uploadType=resumable"),
        ]
        first = run_harness(run_args(root, cache, "--num_train_steps", "4", "--save_interval", "4",
                                     checkpoint_dir=directory), timeout=RUN_TIMEOUT_S, env=env)
        injected = {"per_rule": [rule.injected for rule in rules], "counts": proxy.fault_counts()}
        after_first = gcs_emulator.object_names(prefix + "/")
        resumed = run_harness(run_args(root, cache, "--num_train_steps", "8", "--save_interval", "4", "--resume",
                                       checkpoint_dir=directory), timeout=RUN_TIMEOUT_S, env=env)
    return {"prefix": prefix, "root": root, "first": first, "injected": injected,
            "expected": [rule.count for rule in rules], "after_first": after_first, "resumed": resumed}


def test_save_through_503s_and_dropped_connections_succeeds(faulty_run):
    first, injected = faulty_run["first"], faulty_run["injected"]

    assert first.returncode == 0, failure_report(first)
    assert injected["per_rule"] == faulty_run["expected"]
    assert injected["counts"] == {"503": 2, "drop": 2, "drop_after_forward": 1}
    assert committed_steps(faulty_run["after_first"], faulty_run["prefix"]) == [4]


def test_resume_from_a_save_that_saw_faults_is_bit_for_bit(faulty_run, cache):
    resumed = faulty_run["resumed"]
    reference = uninterrupted_rows("1x8", 8, workdir=faulty_run["root"] / "reference",
                                   extra_args=tuple(cache))

    assert resumed.returncode == 0, failure_report(resumed)
    assert "Resumed from checkpoint at step 4" in resumed.stdout.splitlines()
    assert read_metrics(faulty_run["root"] / "run" / "metrics.jsonl") == reference
