"""Validate a JobSet manifest offline: the JobSet CRD's schema, Kubernetes' own Job schema,
and the Job rules the API server checks that no schema expresses.

- launch/gke/schemas/ holds the JobSet CRD (kubernetes-sigs/jobset v0.12.0). Its
  `openAPIV3Schema` is checked with jsonschema, strictly: every object that lists its
  properties gets `additionalProperties: false` (unless it preserves unknown fields), so a
  misspelt field fails as `kubectl apply --validate=strict` would fail it.
- each replicated Job's template, as a batch/v1 Job, is checked against the strict
  Kubernetes schemas that the kubernetes-validate package ships (KUBERNETES_VERSION).
- `job_rule_problems`: Kubernetes' Job validation (pkg/apis/batch/validation) for what the
  manifests use: a pod failure policy needs `restartPolicy: Never`; `onExitCodes` values
  are at most 255, unique and ascending, name an existing container, and `In` may not
  list 0; `completions == parallelism` for our Indexed Jobs. And the JobSet webhook's rule
  for failure policy rule names (RULE_NAME, stated in the CRD's description only).
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CRD = Path(__file__).resolve().parents[2] / "launch" / "gke" / "schemas" / "jobset.x-k8s.io_jobsets-v0.12.0.yaml"
KUBERNETES_VERSION = "1.33.0"
MAX_EXIT_CODES = 255
RULE_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def _strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which objects reject fields they do not list."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if "properties" in strict and "additionalProperties" not in strict \
            and not strict.get("x-kubernetes-preserve-unknown-fields"):
        strict["additionalProperties"] = False
    return strict


@functools.cache
def jobset_validator() -> jsonschema.protocols.Validator:
    with CRD.open() as file:
        crd = yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def jobset_schema_problems(manifest: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in jobset_validator().iter_errors(manifest)]


def job_schema_problems(manifest: dict[str, Any]) -> list[str]:
    problems = []
    for replicated in manifest["spec"]["replicatedJobs"]:
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": replicated["name"]},
               "spec": copy.deepcopy(replicated["template"]["spec"])}
        try:
            kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{replicated['name']}: {error.message}")
    return problems


def job_rule_problems(manifest: dict[str, Any]) -> list[str]:
    problems = [f"failure policy rule name {rule.get('name')!r} does not match {RULE_NAME.pattern}"
                for rule in manifest["spec"].get("failurePolicy", {}).get("rules", [])
                if not RULE_NAME.match(rule.get("name", ""))]
    for replicated in manifest["spec"]["replicatedJobs"]:
        spec = replicated["template"]["spec"]
        pod = spec["template"]["spec"]
        containers = {container["name"] for container in pod["containers"]}
        if spec.get("completions") != spec.get("parallelism"):
            problems.append("completions must equal parallelism (one pod per VM, all at once)")
        if "podFailurePolicy" in spec and pod.get("restartPolicy") != "Never":
            problems.append("a podFailurePolicy needs restartPolicy: Never")
        for rule in spec.get("podFailurePolicy", {}).get("rules", []):
            codes = rule.get("onExitCodes")
            if codes is None:
                continue
            values = codes["values"]
            if len(values) > MAX_EXIT_CODES:
                problems.append(f"onExitCodes lists {len(values)} values (at most {MAX_EXIT_CODES})")
            if any(b <= a for a, b in zip(values, values[1:])):
                problems.append("onExitCodes values must be unique and ascending")
            if codes["operator"] == "In" and 0 in values:
                problems.append("onExitCodes with In may not list 0")
            if codes.get("containerName") not in containers:
                problems.append(f"onExitCodes names container {codes.get('containerName')!r}, not in the pod")
    return problems


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    return jobset_schema_problems(manifest) + job_schema_problems(manifest) + job_rule_problems(manifest)
