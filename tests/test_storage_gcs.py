"""Checkpoints on gs:// against a real local GCS emulator, with injected faults.

    .venv/bin/python -m pytest -q tests/test_storage_gcs.py

The orbax parts run in a child process each (`_ORBAX_JOB`) with 8 fake CPU
devices, so their XLA flags never meet other test modules' JAX. The emulator
and the fault proxy run as threads of the test process; the child reaches them
over 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from harness.runtime import storage
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.gcs_emulator import GcsEmulator, gcs_emulator  # noqa: F401 (fixture)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 120
# Fast enough for tests; max_retries=1 (two attempts) makes a persistent
# fault fail the save quickly and deterministically.
FAST_RETRIES = {"max_retries": 8, "initial_delay_s": 0.01, "max_delay_s": 0.2}
FRAGILE_RETRIES = {"max_retries": 1, "initial_delay_s": 0.01, "max_delay_s": 0.01}

_ORBAX_JOB = r'''
import json
import sys

config = json.loads(sys.argv[1])

from harness.runtime import storage

storage.configure_gcs_emulator(config["emulator_url"])  # Before orbax starts.

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

storage.configure_orbax_gcs_retries(storage.GcsRetryPolicy(**config["retries"]))
assert jax.device_count() == 8, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("data",))
sharded = NamedSharding(mesh, PartitionSpec("data"))
replicated = NamedSharding(mesh, PartitionSpec())


def make_state(step):
    return {
        "w": jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(16, 4) / (step + 1), sharded),
        "b": jax.device_put(jnp.arange(8, dtype=jnp.int32) - step, sharded),
        "step": jax.device_put(jnp.int32(step), replicated),
    }


def restores_bitwise(mgr, step):
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), make_state(0)
    )
    restored = mgr.restore(step, args=ocp.args.StandardRestore(target))
    expected = make_state(step)
    return all(
        np.asarray(restored[k]).tobytes() == np.asarray(expected[k]).tobytes()
        and restored[k].sharding == expected[k].sharding
        for k in expected
    )


def manager():
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    return ocp.CheckpointManager(config["directory"], options=options)


def save_and_wait(mgr, step):
    mgr.save(step, args=ocp.args.StandardSave(make_state(step)))
    mgr.wait_until_finished()


def error_report(error):
    return {"type": type(error).__name__, "message": str(error)[:500],
            "transient": storage.is_transient_storage_error(error)}


report = {}
mgr = manager()
if config["scenario"] == "save_and_restore":
    for step in range(4):  # Async: each save waits for the previous one.
        mgr.save(step, args=ocp.args.StandardSave(make_state(step)))
    mgr.wait_until_finished()
    report["all_steps"] = list(mgr.all_steps())
    report["bitwise"] = restores_bitwise(mgr, mgr.latest_step())
elif config["scenario"] == "save_fails":
    save_and_wait(mgr, 0)
    try:
        save_and_wait(mgr, 1)
    except Exception as error:
        report["error"] = error_report(error)
    report["all_steps"] = list(mgr.all_steps())
elif config["scenario"] == "resume":
    report["all_steps"] = list(mgr.all_steps())
    report["latest_step"] = mgr.latest_step()
    report["bitwise_latest"] = restores_bitwise(mgr, mgr.latest_step())
    try:
        restores_bitwise(mgr, 1)
    except Exception as error:
        report["restore_uncommitted_error"] = error_report(error)
    attempts = []

    def save_step_1():
        attempts.append(len(attempts))
        save_and_wait(mgr, 1)

    storage.retry_transient(save_step_1, attempts=3, initial_delay=0.01, max_delay=0.05)
    report["save_attempts"] = len(attempts)
    report["all_steps_after_save"] = list(mgr.all_steps())
    report["bitwise_resaved"] = restores_bitwise(mgr, 1)
mgr.close()
print("REPORT " + json.dumps(report))
'''


def run_orbax_job(scenario: str, emulator_url: str, directory: str, retries: dict) -> dict:
    """Runs `_ORBAX_JOB` in a child with 8 fake devices; returns its report."""
    config = {
        "scenario": scenario,
        "emulator_url": emulator_url,
        "directory": directory,
        "retries": retries,
    }
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    result = subprocess.run(
        [sys.executable, "-c", _ORBAX_JOB, json.dumps(config)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    reports = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    if result.returncode != 0 or not reports:
        pytest.fail(
            f"orbax job {scenario!r} failed (rc={result.returncode}):\n{result.stderr[-4000:]}"
        )
    return json.loads(reports[-1].removeprefix("REPORT "))


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A per-test object prefix, so tests share one emulator without meeting."""
    return request.node.name.replace("[", "-").replace("]", "")


@pytest.fixture
def emulator_env(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> GcsEmulator:
    """Points this process's storage clients at the emulator for one test."""
    for name, value in gcs_emulator.env.items():
        monkeypatch.setenv(name, value)
    return gcs_emulator


@pytest.fixture
def fault_proxy(gcs_emulator: GcsEmulator) -> Iterator[FaultProxy]:
    with FaultProxy(gcs_emulator.url, timeout_s=20) as proxy:
        yield proxy


def committed_steps(emulator: GcsEmulator, prefix: str) -> list[int]:
    """Steps whose commit_success.txt marker is in the bucket."""
    names = emulator.object_names(prefix + "/")
    marker = "commit_success.txt"
    return sorted(int(n.split("/")[1]) for n in names if n.count("/") == 2 and n.endswith(marker))


def step_objects(emulator: GcsEmulator, prefix: str, step: int) -> list[str]:
    return emulator.object_names(f"{prefix}/{step}/")


# --- The emulator and the proxy on their own -------------------------------------


def test_emulator_serves_google_cloud_storage(emulator_env: GcsEmulator, prefix: str) -> None:
    from google.cloud import storage as gcs

    bucket = gcs.Client(project="test").bucket(emulator_env.bucket)
    payload = bytes(range(256)) * 64
    bucket.blob(f"{prefix}/blob.bin").upload_from_string(payload)
    blob = bucket.blob(f"{prefix}/blob.bin")
    assert blob.download_as_bytes() == payload
    assert blob.download_as_bytes(start=10, end=19) == payload[10:20]
    assert emulator_env.object_names(prefix) == [f"{prefix}/blob.bin"]


def test_emulator_serves_epath(emulator_env: GcsEmulator, prefix: str) -> None:
    from etils import epath

    root = epath.Path(f"gs://{emulator_env.bucket}/{prefix}")
    (root / "a").mkdir(parents=True, exist_ok=True)
    (root / "a" / "x.txt").write_text("hello")
    assert (root / "a" / "x.txt").read_text() == "hello"
    assert [p.name for p in root.iterdir()] == ["a"]
    assert (root / "a").is_dir()
    (root / "a").rmtree()
    assert emulator_env.object_names(prefix) == []


def test_fault_proxy_injects_each_fault_kind(
    fault_proxy: FaultProxy, gcs_emulator: GcsEmulator, prefix: str
) -> None:
    listing = f"{fault_proxy.url}/storage/v1/b/{gcs_emulator.bucket}/o"

    def get() -> int:
        with urllib.request.urlopen(listing, timeout=5) as response:
            return response.status

    fault_proxy.add_rule(Fault.UNAVAILABLE, method="GET", path="/o", count=2)
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError) as raised:
            get()
        assert raised.value.code == 503
    assert get() == 200

    fault_proxy.add_rule(Fault.DROP, method="GET", count=1)
    with pytest.raises(ConnectionError):
        get()
    assert get() == 200

    # Applied upstream, answer lost: the object exists though the client saw none.
    fault_proxy.add_rule(Fault.DROP_AFTER_FORWARD, method="POST", count=1)
    upload = urllib.request.Request(
        f"{fault_proxy.url}/upload/storage/v1/b/{gcs_emulator.bucket}/o"
        f"?uploadType=media&name={prefix}%2Flost-answer",
        data=b"payload",
        method="POST",
    )
    with pytest.raises(ConnectionError):
        urllib.request.urlopen(upload, timeout=5)
    assert gcs_emulator.object_names(prefix) == [f"{prefix}/lost-answer"]

    every_third = fault_proxy.add_rule(Fault.UNAVAILABLE, path="/o", count=None, every=3)
    statuses = []
    for _ in range(6):
        try:
            statuses.append(get())
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
    assert statuses == [200, 200, 503, 200, 200, 503]
    assert every_third.injected == 2
    assert fault_proxy.fault_counts() == {"503": 4, "drop": 1, "drop_after_forward": 1}


# --- orbax on gs:// -----------------------------------------------------------


def test_orbax_save_prune_restore_on_emulator(gcs_emulator: GcsEmulator, prefix: str) -> None:
    directory = f"gs://{gcs_emulator.bucket}/{prefix}"
    report = run_orbax_job("save_and_restore", gcs_emulator.url, directory, FAST_RETRIES)
    assert report == {"all_steps": [2, 3], "bitwise": True}
    assert committed_steps(gcs_emulator, prefix) == [2, 3]
    assert step_objects(gcs_emulator, prefix, 0) == []  # Pruned by max_to_keep=2.
    assert step_objects(gcs_emulator, prefix, 1) == []


def test_orbax_save_survives_transient_faults(
    gcs_emulator: GcsEmulator, fault_proxy: FaultProxy, prefix: str
) -> None:
    add = fault_proxy.add_rule
    marker_upload = "commit_success.txt&uploadType=resumable&upload_id"
    rules = [
        # tensorstore: array data and OCDBT manifests (uploadType=media), reads.
        add(Fault.UNAVAILABLE, method="POST", path="uploadType=media", count=3),
        add(Fault.DROP, method="GET", path="alt=media&tensorstore=", count=2),
        add(Fault.DROP_AFTER_FORWARD, method="POST", path="ocdbt.process_0%2Fd%2F", count=1),
        # gcsfs: the commit marker's resumable upload, then its existence check.
        add(Fault.UNAVAILABLE, method="POST", path=marker_upload),
        add(Fault.DROP, method="GET", path="commit_success.txt"),
    ]
    directory = f"gs://{gcs_emulator.bucket}/{prefix}"
    report = run_orbax_job("save_and_restore", fault_proxy.url, directory, FAST_RETRIES)
    assert report == {"all_steps": [2, 3], "bitwise": True}
    assert [rule.injected for rule in rules] == [rule.count for rule in rules]
    assert fault_proxy.fault_counts() == {"503": 4, "drop": 3, "drop_after_forward": 1}
    assert committed_steps(gcs_emulator, prefix) == [2, 3]


def test_failed_save_is_never_resumed_and_can_be_redone(
    gcs_emulator: GcsEmulator, fault_proxy: FaultProxy, prefix: str
) -> None:
    directory = f"gs://{gcs_emulator.bucket}/{prefix}"
    sharding_of_step_1 = f"name={prefix}%2F1%2Fdefault%2F_sharding"
    # Both attempts tensorstore gets with max_retries=1 fail: the save fails
    # after writing part of step 1, and proves the retry setting took effect.
    fault_proxy.add_rule(Fault.UNAVAILABLE, method="POST", path=sharding_of_step_1, count=2)
    failed = run_orbax_job("save_fails", fault_proxy.url, directory, FRAGILE_RETRIES)
    assert failed["all_steps"] == [0]
    assert "retry attempts failed" in failed["error"]["message"]
    assert failed["error"]["transient"]
    assert fault_proxy.injected() == 2
    assert committed_steps(gcs_emulator, prefix) == [0]
    half_written = step_objects(gcs_emulator, prefix, 1)
    assert half_written, "expected the failed save to leave objects under step 1"
    assert f"{prefix}/1/commit_success.txt" not in half_written

    # A new run sees only the committed step; its first re-save of step 1
    # fails again and retry_transient redoes the whole save.
    fault_proxy.add_rule(Fault.UNAVAILABLE, method="POST", path=sharding_of_step_1, count=2)
    resumed = run_orbax_job("resume", fault_proxy.url, directory, FRAGILE_RETRIES)
    assert resumed["all_steps"] == [0]
    assert resumed["latest_step"] == 0
    assert resumed["bitwise_latest"]
    assert not resumed["restore_uncommitted_error"]["transient"]
    assert resumed["save_attempts"] == 2
    assert resumed["all_steps_after_save"] == [0, 1]
    assert resumed["bitwise_resaved"]
    assert fault_proxy.injected() == 4
    assert committed_steps(gcs_emulator, prefix) == [0, 1]


# --- harness.runtime.storage helpers ---------------------------------------------------


class _Transient(ConnectionError):
    pass


def _flaky(failures: list[BaseException]):
    """A callable that raises the given errors in turn, then returns "done"."""
    calls = []

    def call() -> str:
        calls.append(len(calls))
        if failures:
            raise failures.pop(0)
        return "done"

    return call, calls


def test_retry_transient_backs_off_exponentially_with_jitter() -> None:
    call, calls = _flaky([_Transient("1"), _Transient("2"), _Transient("3"), _Transient("4")])
    sleeps: list[float] = []
    result = storage.retry_transient(
        call,
        attempts=5,
        initial_delay=1.0,
        max_delay=3.0,
        sleep=sleeps.append,
        rng=random.Random(0),
    )
    assert result == "done"
    assert len(calls) == 5
    caps = [1.0, 2.0, 3.0, 3.0]
    assert len(sleeps) == len(caps)
    for slept, cap in zip(sleeps, caps):
        assert cap / 2 <= slept <= cap


def test_retry_transient_gives_up_after_attempts() -> None:
    call, calls = _flaky([_Transient("a"), _Transient("b"), _Transient("c")])
    sleeps: list[float] = []
    with pytest.raises(_Transient, match="b"):
        storage.retry_transient(
            call, attempts=2, initial_delay=0.1, max_delay=1.0, sleep=sleeps.append
        )
    assert len(calls) == 2
    assert len(sleeps) == 1


def test_retry_transient_does_not_retry_other_errors() -> None:
    call, calls = _flaky([FileNotFoundError("no bucket")])
    sleeps: list[float] = []
    with pytest.raises(FileNotFoundError):
        storage.retry_transient(
            call, attempts=5, initial_delay=0.1, max_delay=1.0, sleep=sleeps.append
        )
    assert (len(calls), sleeps) == (1, [])


def test_retry_transient_uses_the_given_classifier() -> None:
    call, calls = _flaky([KeyError("odd but transient here")])
    result = storage.retry_transient(
        call,
        attempts=2,
        initial_delay=0.0,
        max_delay=0.0,
        is_transient=lambda error: isinstance(error, KeyError),
        sleep=lambda _: None,
    )
    assert (result, len(calls)) == ("done", 2)


def test_retry_transient_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        storage.retry_transient(lambda: None, attempts=0, initial_delay=0.1, max_delay=1.0)
    with pytest.raises(ValueError):
        storage.retry_transient(lambda: None, attempts=1, initial_delay=2.0, max_delay=1.0)


def _caused_by(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("wrapper") from cause
    except RuntimeError as error:
        return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (ValueError("UNAVAILABLE: CURL error Server returned nothing"), True),
        (ValueError("ABORTED: Error writing gs://b/x: All 1 retry attempts failed: 503"), True),
        (_caused_by(ConnectionAbortedError("dropped")), True),
        (FileNotFoundError("gs://missing-bucket/x"), False),
        (PermissionError("denied"), False),
        (ValueError("NOT_FOUND: no such checkpoint"), False),
    ],
)
def test_is_transient_storage_error(error: BaseException, transient: bool) -> None:
    assert storage.is_transient_storage_error(error) == transient


def test_is_transient_storage_error_knows_gcsfs_http_errors() -> None:
    from gcsfs.retry import HttpError

    assert storage.is_transient_storage_error(HttpError({"code": 503, "message": "busy"}))
    assert not storage.is_transient_storage_error(HttpError({"code": 403, "message": "no"}))


def test_retry_policy_is_a_valid_tensorstore_context() -> None:
    import tensorstore as ts

    policy = storage.GcsRetryPolicy(max_retries=3, initial_delay_s=0.25, max_delay_s=4)
    resource = {"gcs_request_retries": policy.tensorstore_resource()}
    assert ts.Context(resource)["gcs_request_retries"].to_json() == {
        "max_retries": 3,
        "initial_delay": "250ms",
        "max_delay": "4s",
    }


def test_emulator_env_from_harness_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in storage.gcs_emulator_env("http://x:1"):
        monkeypatch.delenv(name, raising=False)
    assert storage.configure_gcs_emulator_from_env({}) is None
    assert "TENSORSTORE_GCS_HTTP_URL" not in os.environ
    harness_env = {storage.EMULATOR_ENV_VAR: "http://127.0.0.1:4443/"}
    url = storage.configure_gcs_emulator_from_env(harness_env)
    assert url == "http://127.0.0.1:4443/"
    assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:4443"
    assert os.environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:4443"
    with pytest.raises(ValueError, match="http://127.0.0.1:PORT"):
        storage.configure_gcs_emulator("127.0.0.1:4443")


def test_is_gcs_path() -> None:
    from etils import epath

    assert storage.is_gcs_path("gs://bucket/ckpt")
    assert storage.is_gcs_path(epath.Path("gs://bucket/ckpt"))
    assert not storage.is_gcs_path("/tmp/ckpt")
    assert not storage.is_gcs_path("ckpt/gs://x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_checkpoint_path_writable_rejects_read_only_dir(tmp_path: pathlib.Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        problem = storage.checkpoint_path_writable(str(read_only / "ckpt"))
    finally:
        read_only.chmod(0o755)
    assert problem == f"cannot write in {read_only}: Permission denied"
    assert list(read_only.iterdir()) == []


def test_checkpoint_path_writable_rejects_path_under_a_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    problem = storage.checkpoint_path_writable(str(tmp_path / "file" / "ckpt"))
    assert problem == f"{tmp_path / 'file'} is not a directory"


def test_checkpoint_path_writable_accepts_missing_parents(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "runs" / "a" / "ckpt"
    assert storage.checkpoint_path_writable(str(target)) is None
    assert list(tmp_path.iterdir()) == []  # Nothing created, nothing left behind.


def test_checkpoint_path_writable_on_emulator(emulator_env: GcsEmulator, prefix: str) -> None:
    assert storage.checkpoint_path_writable(f"gs://{emulator_env.bucket}/{prefix}/ckpt") is None
    assert emulator_env.object_names(prefix) == []
    problem = storage.checkpoint_path_writable("gs://no-such-bucket/ckpt")
    assert problem == "bucket gs://no-such-bucket does not exist"
