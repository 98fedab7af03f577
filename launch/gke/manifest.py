"""The JobSet that runs the harness on GKE TPU slices, shaped like xpk's.

One replicated Job per slice (`replicas` = slices), one pod per TPU VM (`parallelism` =
`completions` = VMs per slice, Indexed), each asking for all of its VM's chips. The
restart policy is the harness's exit-code contract (harness/errors.py), as xpk writes it:

- a pod that exits with a code outside RESTARTABLE_EXIT_CODES (0 is success; 1 non-finite,
  2 bad input or config) fails its Job through the pod failure policy, and the JobSet
  rule `FailJobSet` on `PodFailurePolicy` ends the whole run: restarting would fail the
  same way;
- 42 (lost host, preemption, a stop that found the pod broken) and 127-255 (killed by a
  signal, JAX's own abort) fail the Job (`backoffLimit: 0`) without that reason, and the
  JobSet recreates all its Jobs, up to `maxRestarts` times; the harness's command carries
  `--resume`, so a restart continues from the newest checkpoint.

No TPU_* or MEGASCALE_* variables are set here: on GKE's TPU node pools the pods get their
worker ids and hostnames from GKE, and `jax.distributed.initialize()` finds them (the TPU
presets' `distributed = "pod"`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.errors import EXIT_RESTARTABLE
from launch.gke.tpus import TPU_RESOURCE, GkeSlice

API_VERSION = "jobset.x-k8s.io/v1alpha2"
CONTAINER = "harness"
REPLICATED_JOB = "slice"
# xpk's default list: 42 and every signal status. Kubernetes wants them sorted, unique, <= 255 values.
RESTARTABLE_EXIT_CODES = (EXIT_RESTARTABLE, *range(127, 256))
# Ports the TPU runtime uses between the VMs of a slice and across slices (as in GKE's examples).
TPU_PORTS = (8471, 8080)
EXCLUSIVE_TOPOLOGY = "alpha.jobset.sigs.k8s.io/exclusive-topology"


@dataclasses.dataclass(frozen=True)
class Workload:
    """What to run: the JobSet's name, the image, the harness's arguments, the policies."""

    name: str
    image: str
    harness_args: tuple[str, ...]
    max_restarts: int = 3
    termination_grace_s: int = 60
    wandb_secret: str | None = None
    service_account: str | None = None


def container(workload: Workload, tpu: GkeSlice) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    if workload.wandb_secret:
        env.append({"name": "WANDB_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": workload.wandb_secret, "key": "WANDB_API_KEY"}}})
    return {
        "name": CONTAINER,
        "image": workload.image,
        "command": ["python", "-m", "harness.train"],
        "args": list(workload.harness_args),
        "env": env,
        "ports": [{"containerPort": port} for port in TPU_PORTS],
        "resources": {"limits": {TPU_RESOURCE: tpu.chips_per_vm}},
    }


def pod_failure_policy() -> dict[str, Any]:
    return {"rules": [{"action": "FailJob", "onExitCodes": {
        "containerName": CONTAINER, "operator": "NotIn", "values": list(RESTARTABLE_EXIT_CODES)}}]}


def jobset(workload: Workload, tpu: GkeSlice) -> dict[str, Any]:
    """The manifest as plain data (yaml.safe_dump or json.dumps it)."""
    labels = {"app.kubernetes.io/name": "podharness", "podharness/workload": workload.name}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": tpu.node_selector(),
        "terminationGracePeriodSeconds": workload.termination_grace_s,
        "containers": [container(workload, tpu)],
    }
    if workload.service_account:
        pod_spec["serviceAccountName"] = workload.service_account
    return {
        "apiVersion": API_VERSION,
        "kind": "JobSet",
        "metadata": {
            "name": workload.name,
            "labels": labels,
            # One slice per node pool: a Job's pods never straddle two slices.
            "annotations": {EXCLUSIVE_TOPOLOGY: "cloud.google.com/gke-nodepool"},
        },
        "spec": {
            "failurePolicy": {
                "maxRestarts": workload.max_restarts,
                "rules": [{"name": "StopOnNonRestartableExit", "action": "FailJobSet",
                           "onJobFailureReasons": ["PodFailurePolicy"]}],
            },
            "replicatedJobs": [{
                "name": REPLICATED_JOB,
                "replicas": tpu.num_slices,
                "template": {"spec": {
                    "parallelism": tpu.vms,
                    "completions": tpu.vms,
                    "completionMode": "Indexed",
                    "backoffLimit": 0,
                    "podFailurePolicy": pod_failure_policy(),
                    "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
                }},
            }],
        },
    }
