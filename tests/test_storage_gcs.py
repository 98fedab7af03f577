"""Checkpoints on gs:// against fake-gcs-server and the start-up check of a gs:// path
(the orbax internals the retry policy relies on: tests/test_private_apis.py).

    .venv/bin/python -m pytest -q tests/test_storage_gcs.py

The orbax parts run in a child process each (`_ORBAX_JOB`) with 8 fake CPU devices, so
their XLA flags never meet other test modules' JAX. The emulator is a subprocess of the
session (tests/support/gcs_emulator.py); tests talk to it directly, except the
fault-injection ones, which put a FaultProxy (threads of the test process) in between.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from harness.runtime import storage
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.runs import REPO_ROOT, failure_report, harness_env, run_harness

if TYPE_CHECKING:
    from tests.support.gcs_emulator import GcsEmulator

# The session's `gcs_emulator` fixture. Nothing here imports that module before pytest
# does (the recipe-loop tests import it inside), so pytest can rewrite its assertions.
pytest_plugins = ["tests.support.gcs_emulator"]

CHILD_TIMEOUT_S = 120
# Fast enough for tests; max_retries=1 (two attempts) makes a persistent
# fault fail the save quickly and deterministically.
FAST_RETRIES = {"max_retries": 8, "initial_delay_s": 0.01, "max_delay_s": 0.2}
FRAGILE_RETRIES = {"max_retries": 1, "initial_delay_s": 0.01, "max_delay_s": 0.01}
# What would let a child find credentials or an emulator without being told.
_CREDENTIAL_VARIABLES = (
    "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG", "GOOGLE_AUTH_TOKEN_FOR_TESTING", "NO_GCE_CHECK",
    "GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP", storage.EMULATOR_ENV_VAR,
    "STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
)

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
    return {"type": type(error).__name__, "message": str(error)[:500]}


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
    save_and_wait(mgr, 1)
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


def test_emulator_sends_the_generation_with_media_downloads(gcs_emulator: GcsEmulator, prefix: str) -> None:
    """tensorstore takes an object's generation from `x-goog-generation` (GCS sends it with
    every media download); without it, it records generation 0 and refuses its next
    conditional write as "Malformed StorageGeneration" (gcp-storage-emulator's bug)."""
    name = urllib.parse.quote(f"{prefix}/object", safe="")
    upload = urllib.request.Request(
        f"{gcs_emulator.url}/upload/storage/v1/b/{gcs_emulator.bucket}/o?uploadType=media&name={name}",
        data=b"payload", method="POST")
    with urllib.request.urlopen(upload, timeout=10) as response:
        generation = json.loads(response.read())["generation"]
    media = f"{gcs_emulator.url}/storage/v1/b/{gcs_emulator.bucket}/o/{name}?alt=media"
    with urllib.request.urlopen(media, timeout=10) as response:
        assert (response.read(), response.headers["x-goog-generation"]) == (b"payload", generation)
    assert int(generation) > 0


def test_emulator_serves_tensorstore_ocdbt_from_a_fresh_cache(gcs_emulator: GcsEmulator, prefix: str) -> None:
    """The second write opens the OCDBT database with an empty cache, so it reads the
    manifest's generation from the emulator before its conditional write."""
    code = """if True:
        import sys
        import tensorstore as ts
        spec = {"driver": "ocdbt", "base": {"driver": "gcs", "bucket": sys.argv[1], "path": sys.argv[2]}}
        for key in ("first", "second"):
            ts.KvStore.open(spec, context=ts.Context()).result().write(key, b"value").result()
        print(sorted(ts.KvStore.open(spec, context=ts.Context()).result().list().result()))
    """
    result = subprocess.run([sys.executable, "-c", code, gcs_emulator.bucket, f"{prefix}/db/"], cwd=REPO_ROOT,
                            env={**os.environ, **gcs_emulator.env}, capture_output=True, text=True,
                            timeout=CHILD_TIMEOUT_S, check=False)
    assert result.returncode == 0, failure_report(result)
    assert result.stdout == "[b'first', b'second']\n"


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
    marker_upload = "commit_success.txt&upload_id="  # the bytes, into the session gcsfs opened
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
    """Also shows that a save carries the retry policy: with max_retries=1 two 503s fail
    it ("All 1 retry attempts failed"); tensorstore's default 32 retries would absorb them."""
    directory = f"gs://{gcs_emulator.bucket}/{prefix}"
    sharding_of_step_1 = f"name={prefix}%2F1%2Fdefault%2F_sharding"
    fault_proxy.add_rule(Fault.UNAVAILABLE, method="POST", path=sharding_of_step_1, count=2)
    failed = run_orbax_job("save_fails", fault_proxy.url, directory, FRAGILE_RETRIES)
    assert failed["all_steps"] == [0]
    assert "All 1 retry attempts failed" in failed["error"]["message"]
    assert fault_proxy.injected() == 2
    assert committed_steps(gcs_emulator, prefix) == [0]
    half_written = step_objects(gcs_emulator, prefix, 1)
    assert half_written, "expected the failed save to leave objects under step 1"
    assert f"{prefix}/1/commit_success.txt" not in half_written

    # A new run, straight to the emulator, sees only the committed step and saves step 1 anew.
    resumed = run_orbax_job("resume", gcs_emulator.url, directory, FRAGILE_RETRIES)
    assert resumed["all_steps"] == [0]
    assert resumed["latest_step"] == 0
    assert resumed["bitwise_latest"]
    assert "restore_uncommitted_error" in resumed
    assert resumed["all_steps_after_save"] == [0, 1]
    assert resumed["bitwise_resaved"]
    assert committed_steps(gcs_emulator, prefix) == [0, 1]


# --- harness.runtime.storage helpers ---------------------------------------------------


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
    assert storage.checkpoint_path_writable("gs://no-such-bucket/ckpt") == "bucket gs://no-such-bucket does not exist"
    assert storage.checkpoint_path_writable("gs:///ckpt") == "no bucket in the gs:// path"


def test_gcs_check_gives_up_after_its_timeout_quietly() -> None:
    """Storage that accepts connections and never answers: one reason after the check's
    timeout, nothing printed, instead of gcsfs's minute of retries and warnings."""
    code = ("import sys; from harness.runtime import storage; storage.configure_gcs_emulator(sys.argv[1]); "
            "print(storage.checkpoint_path_writable('gs://silent-bucket/ckpt', gcs_timeout_s=1))")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-c", code, url], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=CHILD_TIMEOUT_S, check=False)
    assert (result.returncode, result.stderr) == (0, ""), failure_report(result)
    assert result.stdout == "no answer within 1 s while writing a probe object in gs://silent-bucket\n"


def test_gs_checkpoint_dir_without_credentials_fails_at_once_in_one_line(tmp_path: pathlib.Path) -> None:
    """No emulator, no application-default credentials, no reachable metadata server: exit
    2 with one line naming the missing credentials, and nothing written (the start-up
    check used to retry for ~50 s, printing ~50 lines of gcsfs warnings)."""
    home = tmp_path / "home"
    home.mkdir()
    run_dir = tmp_path / "run"
    with socket.socket() as closed:  # Bound, not listening: connections are refused.
        closed.bind(("127.0.0.1", 0))
        metadata = f"127.0.0.1:{closed.getsockname()[1]}"
        env = {name: value for name, value in harness_env().items() if name not in _CREDENTIAL_VARIABLES}
        env.update(HOME=str(home), GCE_METADATA_HOST=metadata, GCE_METADATA_IP=metadata)
        result = run_harness(["--config", "smoke", "--no_wandb", "--checkpoint_dir", "gs://some-bucket/x",
                              "--run_dir", str(run_dir)], env=env, timeout=CHILD_TIMEOUT_S)

    assert result.returncode == 2, failure_report(result)
    assert result.stderr.splitlines() == [(
        "harness-train: error: checkpoint dir gs://some-bucket/x: no Google credentials found: run "
        "`gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or run on a GCP VM "
        f"with a service account (or set {storage.EMULATOR_ENV_VAR} for an emulator)"
    )], failure_report(result)
    assert not run_dir.exists()
    assert list(home.iterdir()) == []


# --- The documented recipe, docs/gcs.md (run as written by tests/support/gcs_recipe_loop.py) --


def test_documented_gcs_recipe_is_what_the_recipe_loop_expects(tmp_path: pathlib.Path) -> None:
    from tests.support.gcs_recipe_loop import harness_commands, recipe_block, reference_args

    block = recipe_block(REPO_ROOT / "docs" / "gcs.md")
    first, resume = harness_commands(block)
    assert "gcs_emulator start --port 9023 --bucket my-bucket" in block
    assert block.rstrip().endswith("gcs_emulator stop --port 9023")
    assert "--resume" not in first and "--resume" in resume
    assert first[first.index("--checkpoint_dir") + 1] == resume[resume.index("--checkpoint_dir") + 1]
    reference = reference_args(resume, tmp_path)
    assert reference[reference.index("--checkpoint_dir") + 1] == str(tmp_path / "ckpt")
    assert "--resume" not in reference


def test_recipe_loop_compares_every_row_with_the_uninterrupted_run() -> None:
    from tests.support.gcs_recipe_loop import metrics_problem

    reference = {step: {"step": step, "loss": 1.0 + step} for step in range(6)}
    assert metrics_problem([reference[0], reference[3], reference[5]], reference, last_step=5) is None
    assert metrics_problem([reference[0], reference[3]], reference, last_step=5) == (
        "metrics end at step 3, not 5")
    changed = {"step": 3, "loss": 4.000000000000001}
    assert metrics_problem([reference[0], changed, reference[5]], reference, last_step=5) == (
        "metrics of steps [3] differ from the uninterrupted run's")


@pytest.mark.soak
def test_documented_gcs_recipe_runs_as_written() -> None:
    """One run of the loop (port 9023 and /tmp/podharness_gcs_run, as docs/gcs.md says)."""
    result = subprocess.run([sys.executable, "-m", "tests.support.gcs_recipe_loop", "--runs", "1"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, failure_report(result)
    assert result.stdout.splitlines()[-1] == "1 passed, 0 failed"
