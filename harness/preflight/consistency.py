"""The consistency gate: every host must run the same program on the same stack.

A host with another jax or libtpu, or an older checkout, compiles a different program
and hangs the collectives (jax#10218, jax#12550, jax#19118; MaxText calls it
INCONSISTENT_TPU_PROGRAM). Each host collects the facts below; process 0 compares them
and FAILs every host whose value differs from the pod's, naming both values. The pod's
value is the one most hosts have; on a tie, the one of the group holding the lowest
host index (process 0, the coordinator, in a 2-host pod).

Facts: the versions actually imported (python, jax, jaxlib, libtpu when installed,
orbax-checkpoint, optax, numpy), a hash of the source of every harness module in
`sys.modules` (the code this process really runs), a hash of the config (without the
per-host process coordinates), a fingerprint of the lowered train step (sha256 of the
StableHLO text of `make_train_step(config, mesh)` lowered for the run's mesh; the
program JAX will compile) and the devices (platform, kind, local count).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from collections.abc import Mapping

from harness.config import TrainConfig, flat_values
from harness.preflight.faults import CODE_HASH, JAX_VERSION, MARK, Fault
from harness.preflight.results import CONSISTENCY, FAIL, PASS, HostReport, Observation

PER_HOST_FIELDS = ("coordinator_address", "num_processes", "process_id")  # same run, other coordinates
STEP_FAILED = "cannot lower"
HASH_CHARS = 16


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


def code_hash(modules: Mapping[str, ModuleType] | None = None, *, salt: str = "") -> str:
    """sha256 over (name, source bytes) of every imported `harness` module, in name
    order, with the file count: `<16 hex> (<N> files)`."""
    modules = sys.modules if modules is None else modules
    digest = hashlib.sha256(salt.encode())
    files = 0
    for name in sorted(n for n in list(modules) if n == "harness" or n.startswith("harness.")):
        path = getattr(modules[name], "__file__", None)
        if not path:
            continue
        digest.update(name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
        files += 1
    return f"{digest.hexdigest()[:HASH_CHARS]} ({files} files)"


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


def collect_facts(config: TrainConfig, fault: Fault) -> dict[str, str]:
    """This host's facts (the faults jax_version and code_hash change what it reports)."""
    facts = versions()
    if fault.here(JAX_VERSION):
        facts["jax"] += MARK
    facts["harness code"] = code_hash(salt=MARK if fault.here(CODE_HASH) else "")
    facts["config"] = config_hash(config)
    facts["train step"] = step_fingerprint(config)
    facts.update(device_facts())
    return facts


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
    and the pod's (and which hosts hold the pod's); FAIL too when the step cannot lower."""
    facts_by_host = {host: report.facts for host, report in reports.items()}
    pod = pod_values(facts_by_host)
    cells = {}
    for host, facts in facts_by_host.items():
        differ = [name for name in pod if facts.get(name, "absent") != pod[name]]
        if differ:
            parts = []
            for name in differ:
                holders = [h for h, f in facts_by_host.items() if f.get(name, "absent") == pod[name]]
                parts.append(f"{name}: {facts.get(name, 'absent')} here vs {pod[name]} on host(s) "
                             f"{', '.join(map(str, holders))}")
            first = differ[0]
            cells[host] = Observation(CONSISTENCY, FAIL, f"{first} {facts.get(first, 'absent')} ≠ {pod[first]}"
                                      + (f" (+{len(differ) - 1})" if len(differ) > 1 else ""), "; ".join(parts))
        elif facts.get("train step", "").startswith(STEP_FAILED):
            cells[host] = Observation(CONSISTENCY, FAIL, "step does not lower", facts["train step"])
        else:
            cells[host] = Observation(CONSISTENCY, PASS, f"{len(pod)} facts agree",
                                      f"jax {pod.get('jax')}, code {pod.get('harness code')}, "
                                      f"step {pod.get('train step')}")
    return cells
