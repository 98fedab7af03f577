"""Which host is slow at its own work, and the rule that calls a host slow.

A collective ends for every host when the slowest arrives, so a slow host makes every
host's collectives slow and none of them looks late: timing collectives cannot name it.
Each host therefore times work that involves no other host, all starting together after
a barrier (`measure_speed`), in three parts:

- device work: a fixed chain of 512x512 matmuls on every local device at once (a jit
  over a mesh of this host's devices only: nothing crosses hosts), blocking on each;
- host work: a fixed numpy sort and a sha256 of 8 MiB, on one thread, back to back;
- response: a small host task (about half a millisecond) due every 10 ms, the way a
  training step's work arrives; its measure is the time from when a task was due to
  when it finished. A host that is not running when work arrives (frozen, preempted by
  its hypervisor) is late to every step of a lockstep pod, yet on a busy machine it can
  catch up on CPU time in between, so back-to-back work alone under-reports it.

Each part runs in `ROUNDS` rounds, each after a barrier, for its share of `seconds`. A
round's measure is a mean over its units (a host frozen in bursts finishes most units at
full speed and loses whole bursts between them: a median of units would miss exactly
that); the part's measure is the median round, so a burst of someone else's load in one
round does not make a host slow. On CPU the "devices" are threads of the host process on
the host's own cores, so device work there is host work measured with more noise (thread
hand-offs): it is reported, and judged on accelerators only.

The rule (`outliers`), shared with the dry run's step times and the storage throughput:
with three hosts or more, a host is slow when its time exceeds `median + K * spread`
(spread: the median absolute deviation, at least `SPREAD_FLOOR` of the median, so a pod of
identical hosts does not flag noise), is at least `factor` times the median and exceeds
it by a part's minimum. With two hosts the median is their mean and the deviation half
their gap, so that rule can never fire: each host is compared with the other, slow when
`factor` times slower (and above the minimum).
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np

from harness.preflight.results import FAIL, HOST_SPEED, PASS, HostReport, Observation

K = 3.0
SPREAD_FLOOR = 0.05
MEASURE_S = 1.2  # of each part, per host
ROUNDS = 10  # each after a barrier; a part's measure is the median round's
DEVICE_SIZE, DEVICE_CHAIN = 512, 4
HOST_SORT_ELEMENTS, HOST_HASH_BYTES = 1 << 19, 1 << 23
TASK_SORT_ELEMENTS, TASK_HASH_BYTES, TASK_PERIOD_S = 1 << 15, 1 << 18, 0.01
# Part -> (its words, its metric, the least excess over the others that counts, in ms).
PARTS = {"device": ("device work", "device_ms_per_unit", 0.0), "host": ("host work", "host_ms_per_unit", 0.0),
         "response": ("response to work due every 10 ms", "response_ms", 5.0)}


@dataclasses.dataclass(frozen=True)
class Outlier:
    """A slow host: its value, the reference it was held against, and what that was."""

    value: float
    reference: float
    against: str  # "the median" | "the other host"

    @property
    def ratio(self) -> float:
        return self.value / self.reference


def outliers(values: Mapping[int, float], factor: float, *, min_excess: float = 0.0) -> dict[int, Outlier]:
    """The hosts whose value (a time: larger is slower) is far above the others', and
    above them by at least `min_excess`."""
    if len(values) < 2:
        return {}
    if len(values) == 2:
        (a, va), (b, vb) = values.items()
        found = {a: Outlier(va, vb, "the other host"), b: Outlier(vb, va, "the other host")}
    else:
        median = statistics.median(values.values())
        spread = max(statistics.median(abs(v - median) for v in values.values()), SPREAD_FLOOR * median)
        found = {h: Outlier(v, median, "the median") for h, v in values.items() if v > median + K * spread}
    return {h: o for h, o in found.items()
            if o.reference > 0 and o.value >= factor * o.reference and o.value - o.reference >= min_excess}


def _back_to_back(unit: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Units one after the other until `seconds` have passed: (units, seconds per unit)."""
    units, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        unit()
        units += 1
    return units, elapsed / units


def _paced(unit: Callable[[], object], seconds: float) -> tuple[int, float]:
    """A unit due every TASK_PERIOD_S (started on time, or at once when late) for
    `seconds`: (units, mean seconds from due to done)."""
    units, late, started = 0, 0.0, time.perf_counter()
    while (due := started + units * TASK_PERIOD_S) < started + seconds:
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        unit()
        late += time.perf_counter() - due
        units += 1
    return units, late / units


def _sort_and_hash(elements: int, nbytes: int) -> Callable[[], object]:
    values = np.random.default_rng(1).standard_normal(elements)
    block = np.random.default_rng(2).bytes(nbytes)

    def unit() -> object:
        return np.sort(values, kind="quicksort")[0], hashlib.sha256(block).digest()

    return unit


def _device_unit() -> Callable[[], object]:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    local = jax.local_devices()
    sharding = NamedSharding(Mesh(np.array(local), ("local",)), P("local"))
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((len(local), DEVICE_SIZE, DEVICE_SIZE), np.float32), sharding)
    w = jax.device_put(rng.standard_normal((len(local), DEVICE_SIZE, DEVICE_SIZE), np.float32) / DEVICE_SIZE**0.5,
                       sharding)

    @jax.jit
    def chain(x, w):
        return jax.lax.fori_loop(0, DEVICE_CHAIN, lambda _, y: jnp.tanh(y @ w), x)

    def unit() -> object:
        return jax.block_until_ready(chain(x, w))

    unit()  # compile and warm up
    return unit


def measure_speed(seconds: float, meet: Callable[[], bool]) -> Observation:
    """This host's measure of each part (a collective sequence: `meet` is the barrier
    every host passes before each round)."""
    parts = (("device", _device_unit(), _back_to_back),
             ("host", _sort_and_hash(HOST_SORT_ELEMENTS, HOST_HASH_BYTES), _back_to_back),
             ("response", _sort_and_hash(TASK_SORT_ELEMENTS, TASK_HASH_BYTES), _paced))
    metrics: dict[str, float] = {}
    for part, unit, run in parts:
        rounds = []
        for _ in range(ROUNDS):
            if not meet():
                return Observation(HOST_SPEED, FAIL, "hosts did not meet", f"a host did not reach the barrier "
                                                                           f"before the timed {PARTS[part][0]}")
            rounds.append(run(unit, seconds / ROUNDS))
        metrics[f"{part}_units"] = float(sum(units for units, _ in rounds))
        metrics[PARTS[part][1]] = statistics.median(measure for _, measure in rounds) * 1e3
    metrics["device_judged"] = float(not _devices_are_host_threads())
    return Observation(HOST_SPEED, PASS, _value(metrics), _detail(metrics, seconds), metrics=metrics)


def _devices_are_host_threads() -> bool:
    import jax

    return jax.default_backend() == "cpu"


def judged_parts(measured: Mapping[int, Observation]) -> tuple[str, ...]:
    """The parts judged across hosts: device work only where the devices are
    accelerators on every host."""
    accelerators = bool(measured) and all(o.metrics.get("device_judged") == 1.0 for o in measured.values())
    return ("device", "host", "response") if accelerators else ("host", "response")


def _value(metrics: Mapping[str, float]) -> str:
    return (f"dev {metrics['device_ms_per_unit']:.0f} host {metrics['host_ms_per_unit']:.0f} "
            f"resp {metrics['response_ms']:.1f} ms")


def _detail(metrics: Mapping[str, float], seconds: float) -> str:
    return (f"{seconds:g} s of each part, in {ROUNDS} rounds after barriers, nothing shared with another host: "
            f"device work {metrics['device_ms_per_unit']:.2f} ms per unit ({metrics['device_units']:.0f} units of "
            f"{DEVICE_CHAIN} {DEVICE_SIZE}x{DEVICE_SIZE} matmuls on every local device), host work "
            f"{metrics['host_ms_per_unit']:.2f} ms per unit ({metrics['host_units']:.0f} units of a "
            f"{HOST_SORT_ELEMENTS}-element sort and a sha256 of {HOST_HASH_BYTES >> 20} MiB), response "
            f"{metrics['response_ms']:.2f} ms from due to done ({metrics['response_units']:.0f} small tasks due every "
            f"{TASK_PERIOD_S * 1e3:g} ms)"
            + ("" if metrics["device_judged"] else "; device work not judged: the CPU devices are this host's threads"))


def judge_speed(reports: Mapping[int, HostReport], factor: float) -> dict[int, Observation]:
    """The host-speed cells of the hosts found slow in any judged part (FAIL, naming the
    factor); every other host keeps its own cell."""
    measured = {h: o for h, r in reports.items() if (o := r.observation(HOST_SPEED)) and o.status == PASS}
    found: dict[int, dict[str, Outlier]] = {}
    for part in judged_parts(measured):
        _, metric, least_ms = PARTS[part]
        for host, slow in outliers({h: o.metrics[metric] for h, o in measured.items()}, factor,
                                   min_excess=least_ms).items():
            found.setdefault(host, {})[part] = slow
    cells = {}
    for host, parts in found.items():
        worst = max(parts.values(), key=lambda o: o.ratio)
        reasons = "; ".join(f"{PARTS[p][0]} {o.ratio:.1f}x: {o.value:.2f} ms vs {o.reference:.2f}"
                            for p, o in parts.items())
        cell = measured[host]
        cells[host] = dataclasses.replace(
            cell, status=FAIL, value=f"{worst.ratio:.1f}x slower than {worst.against}",
            detail=f"host {host} is {worst.ratio:.1f}x slower than {worst.against} on host-local work ({reasons}; "
                   f"slow at {factor:g}x); {cell.detail}",
            metrics={**cell.metrics, "slowdown": worst.ratio})
    return cells
