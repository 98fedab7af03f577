"""The consistency gate: every host must run the same program on the same stack.

A host with another jax or libtpu, or an older checkout, compiles a different program
and hangs the collectives (jax#10218, jax#12550, jax#19118; MaxText calls it
INCONSISTENT_TPU_PROGRAM). Each host collects the facts below; process 0 compares them
and FAILs every host whose value differs from the pod's, naming both values. The pod's
value is the one most hosts have; on a tie, the one of the group holding the lowest
host index (process 0, the coordinator, in a 2-host pod).

Facts: the versions actually imported (python, jax, jaxlib, libtpu when installed,
orbax-checkpoint, optax, numpy), a hash of every file the run can execute (code_tree.py:
the harness and launch packages on disk, the presets in use, the user's model file), a
hash of the config (without the per-host process coordinates), a fingerprint of the
lowered train step (sha256 of the StableHLO text of `make_train_step(config, mesh)`
lowered for the run's mesh; the program JAX will compile) and the devices (platform,
kind, local count). Beside the facts each host sends its per-file digests, so a host
whose code differs is named with the first files that differ: the ones to sync.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import platform
from collections import Counter
from collections.abc import Mapping

from harness.config import TrainConfig, flat_values
from harness.preflight import code_tree
from harness.preflight.code_tree import FileDigest
from harness.preflight.faults import CODE_HASH, JAX_VERSION, MARK, Fault
from harness.preflight.results import CONSISTENCY, FAIL, PASS, HostReport, Observation

PER_HOST_FIELDS = ("coordinator_address", "num_processes", "process_id")  # same run, other coordinates
STEP_FAILED = "cannot lower"
HASH_CHARS = 16
CODE = "code"  # the fact: a fingerprint of every file the run can execute
NAMED_FILES = 2  # files named in the table's value
DETAIL_FILES = 20  # and in the detail


def versions() -> dict[str, str]:
    import jax
    import jaxlib
    import numpy
    import optax
    import orbax.checkpoint

    found = importlib.util.find_spec("libtpu") is not None
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "libtpu": importlib.metadata.version("libtpu") if found else "not installed",
        "orbax-checkpoint": orbax.checkpoint.__version__,
        "optax": optax.__version__,
        "numpy": numpy.__version__,
    }


def config_hash(config: TrainConfig) -> str:
    fields = {k: v for k, v in flat_values(config).items() if k not in PER_HOST_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]


def step_fingerprint(config: TrainConfig) -> str:
    """sha256 of the lowered train step's StableHLO, or `cannot lower: why`."""
    from harness.errors import UsageError
    from harness.fit.compile import lower_train_step
    from harness.runtime.mesh import check_topology, make_mesh

    try:
        check_topology(config.data.batch_size, config.mesh.fsdp_devices)
        text = lower_train_step(config, make_mesh(config.mesh.fsdp_devices)).as_text()
    except UsageError as err:
        return f"{STEP_FAILED}: {err}"
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def device_facts() -> dict[str, str]:
    import jax

    local = jax.local_devices()
    return {"platform": jax.default_backend(), "device kind": local[0].device_kind if local else "none",
            "local devices": str(len(local))}


def collect_facts(config: TrainConfig, preset: str | None,
                  fault: Fault) -> tuple[dict[str, str], tuple[FileDigest, ...]]:
    """This host's facts and the digests of its code files (the faults jax_version and
    code_hash change what it reports). `preset`: the --config the settings came from."""
    facts = versions()
    if fault.here(JAX_VERSION):
        facts["jax"] += MARK
    files = code_tree.code_files(preset, config.model.name)
    facts[CODE] = code_tree.fingerprint(files, salt=MARK if fault.here(CODE_HASH) else "")
    facts["config"] = config_hash(config)
    facts["train step"] = step_fingerprint(config)
    facts.update(device_facts())
    return facts, files


def pod_values(facts_by_host: Mapping[int, Mapping[str, str]]) -> dict[str, str]:
    """Per fact, the pod's value: most hosts', ties to the group of the lowest host."""
    names = sorted({name for facts in facts_by_host.values() for name in facts})
    pod = {}
    for name in names:
        values = {host: facts.get(name, "absent") for host, facts in facts_by_host.items()}
        counts = Counter(values.values())
        pod[name] = max(counts, key=lambda v: (counts[v], -min(h for h, x in values.items() if x == v)))
    return pod


def judge(reports: Mapping[int, HostReport]) -> dict[int, Observation]:
    """Each host's consistency cell: FAIL naming every fact it differs in, with its value
    and the pod's (and which hosts hold the pod's), and for the code the files that
    differ from the lowest such host's; FAIL too when the step cannot lower."""
    facts_by_host = {host: report.facts for host, report in reports.items()}
    pod = pod_values(facts_by_host)
    cells = {}
    for host, facts in facts_by_host.items():
        differ = [name for name in pod if facts.get(name, "absent") != pod[name]]
        if differ:
            parts, files = [], []
            for name in differ:
                holders = [h for h, f in facts_by_host.items() if f.get(name, "absent") == pod[name]]
                part = (f"{name}: {facts.get(name, 'absent')} here vs {pod[name]} on host(s) "
                        f"{', '.join(map(str, holders))}")
                if name == CODE:
                    files = code_tree.differing(reports[host].code_files, reports[min(holders)].code_files)
                    if files:
                        part += (f" (files that differ from host {min(holders)}'s: "
                                 f"{code_tree.name_some(files, DETAIL_FILES)})")
                parts.append(part)
            cells[host] = Observation(CONSISTENCY, FAIL, _headline(differ, facts, pod, files), "; ".join(parts))
        elif facts.get("train step", "").startswith(STEP_FAILED):
            cells[host] = Observation(CONSISTENCY, FAIL, "step does not lower", facts["train step"])
        else:
            cells[host] = Observation(CONSISTENCY, PASS, f"{len(pod)} facts agree",
                                      f"jax {pod.get('jax')}, code {pod.get(CODE)}, step {pod.get('train step')}")
    return cells


def _headline(differ: list[str], facts: Mapping[str, str], pod: Mapping[str, str], files: list[str]) -> str:
    """The table's short value: the files to sync when the code differs file by file,
    else the first fact that differs with both values; and how many more facts differ."""
    if files:
        head = f"code differs from the pod's in {code_tree.name_some(files, NAMED_FILES)}"
    else:
        head = f"{differ[0]} {facts.get(differ[0], 'absent')} ≠ {pod[differ[0]]}"
    return head + (f" (+{len(differ) - 1})" if len(differ) > 1 else "")
