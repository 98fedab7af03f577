"""launch.gke: a JobSet for every TPU preset that validates against the JobSet CRD (vendored)
and the strict Kubernetes Job schema (kubernetes-validate), offline; xpk's shape and the
harness's restart contract; refusals of workloads that could not run or resume on GKE.

    .venv/bin/python -m pytest -q tests/test_gke_manifest.py
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from harness.config import available_presets, load_preset
from harness.errors import EXIT_RESTARTABLE
from launch.gke.cli import main as gke_main
from launch.gke.tpus import ACCELERATOR_LABEL, TOPOLOGY_LABEL, TPU_RESOURCE
from tests.support.k8s_schemas import manifest_problems
from tests.support.runs import REPO_ROOT

TPU_PRESETS = [name for name in available_presets() if load_preset(name).tpu.topology]
# Independent of launch/gke/tpus.py: GKE's TPU docs / xpk's system_characteristics.py.
EXPECTED = {  # preset -> (accelerator, topology label, VMs per slice, chips per VM)
    "v4-8": ("tpu-v4-podslice", "2x2x1", 1, 4),
    "v4-32": ("tpu-v4-podslice", "2x2x4", 4, 4),
    "v5litepod-16": ("tpu-v5-lite-podslice", "4x4", 4, 4),
    "v5litepod-256": ("tpu-v5-lite-podslice", "16x16", 64, 4),
    "v6e-256": ("tpu-v6e-slice", "16x16", 64, 4),
}
BUCKET = ["--", "--checkpoint_dir", "gs://bucket/run1"]


def generate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = gke_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def manifest_for(capsys: pytest.CaptureFixture[str], preset: str, *extra: str) -> dict:
    code, out, err = generate(capsys, "--preset", preset, "--name", "run1", "--image", "gcr.io/p/podharness:1",
                              *extra, *BUCKET)
    assert code == 0, err
    return yaml.safe_load(out)


def test_every_tpu_preset_is_covered() -> None:
    assert TPU_PRESETS == sorted(EXPECTED)


@pytest.mark.parametrize("preset", TPU_PRESETS)
def test_each_tpu_preset_gives_a_valid_xpk_shaped_jobset(capsys: pytest.CaptureFixture[str], preset: str) -> None:
    manifest = manifest_for(capsys, preset)
    assert manifest_problems(manifest) == []
    accelerator, topology, vms, chips = EXPECTED[preset]
    [replicated] = manifest["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    pod = job["template"]["spec"]
    [container] = pod["containers"]
    assert replicated["replicas"] == 1
    assert (job["parallelism"], job["completions"], job["backoffLimit"]) == (vms, vms, 0)
    assert pod["nodeSelector"] == {ACCELERATOR_LABEL: accelerator, TOPOLOGY_LABEL: topology}
    assert container["resources"]["limits"] == {TPU_RESOURCE: chips}
    assert container["command"] + container["args"] == [
        "python", "-m", "harness.train", "--config", preset, "--resume", "--checkpoint_dir", "gs://bucket/run1"]


def test_the_restart_policy_is_the_exit_code_contract(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = manifest_for(capsys, "v5litepod-16", "--max_restarts", "5")
    policy = manifest["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 5
    assert policy["rules"] == [{"name": "StopOnNonRestartableExit", "action": "FailJobSet",
                                "onJobFailureReasons": ["PodFailurePolicy"]}]
    [rule] = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["operator"] == "NotIn"
    restartable = set(rule["onExitCodes"]["values"])
    assert restartable == {42, *range(127, 256)}  # xpk's list
    assert EXIT_RESTARTABLE in restartable and not {1, 2} & restartable


def test_slices_secret_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = generate(capsys, "--preset", "v5litepod-256", "--name", "big", "--image", "img", "--num_slices",
                              "2", "--wandb_secret", "wandb", "--format", "json", *BUCKET)
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest_problems(manifest) == []
    [replicated] = manifest["spec"]["replicatedJobs"]
    assert replicated["replicas"] == 2
    [container] = replicated["template"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][:5] == ["--config", "v5litepod-256", "--resume", "--num_slices", "2"]
    assert {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "WANDB_API_KEY"}}} \
        in container["env"]
    assert "2 slice(s) x 64 VM(s) with 4 chips each; node pools of ct5lp-hightpu-4t" in err


def test_the_validator_catches_what_the_api_server_would_reject(capsys: pytest.CaptureFixture[str]) -> None:
    """The checks are not vacuous: each mistake is named."""
    manifest = manifest_for(capsys, "v4-32")
    job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
    job["template"]["spec"]["containers"][0]["imagee"] = "typo"
    job["template"]["spec"]["restartPolicy"] = "OnFailure"
    job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"].reverse()
    manifest["spec"]["failurePolicy"]["rules"][0]["name"] = "stop-on-exit"
    manifest["spec"]["failurePolicy"]["maxRestart"] = 1
    problems = "\n".join(manifest_problems(manifest))
    for expected in ("'imagee' was unexpected", "'maxRestart' was unexpected", "restartPolicy: Never",
                     "unique and ascending", "'stop-on-exit' does not match"):
        assert expected in problems, problems


@pytest.mark.parametrize("argv, expected", [
    (["--preset", "smoke", "--name", "r", "--image", "i", *BUCKET], "preset 'smoke' has no TPU topology"),
    (["--preset", "v4-32", "--name", "r", "--image", "i"], "a restarted pod resumes only from a bucket"),
    (["--preset", "v4-32", "--name", "r", "--image", "i", "--", "--checkpoint_dir", "/tmp/c"],
     "a restarted pod resumes only from a bucket"),
    (["--preset", "v4-32", "--name", "Run_1", "--image", "i", *BUCKET], "--name 'Run_1'"),
    (["--preset", "v4-32", "--name", "r", "--image", "i", *BUCKET, "--distributed", "auto"],
     "4 pods need jax.distributed from the TPU metadata"),
    (["--preset", "nope", "--name", "r", "--image", "i", *BUCKET], "nope"),
])
def test_workloads_that_cannot_run_on_gke_are_refused_with_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out, err = generate(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("launch.gke: error: ") and expected in err, err


def test_python_m_launch_gke_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "launch.gke", "--preset", "v5litepod-16", "--name", "run1",
                             "--image", "img", *BUCKET], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert manifest_problems(yaml.safe_load(result.stdout)) == []
