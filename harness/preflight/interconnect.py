"""Collective bandwidth over each axis of the training mesh, and which host is late.

For every mesh axis longer than 1, each of all-gather, reduce-scatter, all-reduce and
all-to-all runs at every `--interconnect_sizes` (bytes each device contributes),
`--interconnect_repeats` times, each time right after a barrier (a tiny all-reduce over
every device). Each host times, on its own monotonic clock, how long after leaving the
barrier it called the collective (`arrive`) and held the result (`done`). (Not when the
call returned: on some backends dispatch itself waits inside the collective.)

Why both: a collective finishes for everyone when the last host arrives, so a host that
is late makes every host's collective slow and its own look fast; timing alone cannot
say who it was. Hosts leave a barrier together, though, so per repeat
`collective = median over hosts of (done - latest arrive)` is the collective's own time
and `latency(host) = arrive(host) + collective` is what that host costs. A host whose
latency is `--straggler_factor` times the median of the other hosts' (the median ratio
over all measurements) is a straggler, named by index. A slow link slows every host
alike: it shows as low bandwidth, not as a straggler. A host that is slow at everything
arrives late at the barrier too, and leaves it with the others: that one is invisible
here, and stragglers.py names it.

Algorithm bandwidth follows nccl-tests: bytes / collective time, where bytes is the
per-device buffer (the all-gather's output); bus bandwidth scales it by 2(n-1)/n for
all-reduce and (n-1)/n for the others, the figure to hold against a link's speed. On
TPU the chip's published ICI bandwidth is shown beside it (`ICI_GBYTES_PER_S`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from harness.preflight.results import FAIL, INTERCONNECT, PASS, SKIP, HostReport, Observation, Timing

COLLECTIVES = ("all_gather", "reduce_scatter", "all_reduce", "all_to_all")
# Bidirectional inter-chip interconnect bandwidth per chip, GB/s, as Cloud TPU publishes it
# (cloud.google.com/tpu/docs/v5e, /v5p, /v6e), by jax's device_kind. The v4 page gives
# no per-chip figure.
ICI_GBYTES_PER_S = {"TPU v5 lite": 400.0, "TPU v5p": 1200.0, "TPU v5": 1200.0, "TPU v6 lite": 800.0}


def published_ici(device_kind: str) -> float | None:
    return ICI_GBYTES_PER_S.get(device_kind)


def measure(fsdp_devices: int, sizes: Sequence[int], repeats: int) -> tuple[Timing, ...]:
    """Times every collective over every mesh axis at every size (a collective
    sequence: every host calls it with the same arguments)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from harness.runtime.mesh import make_mesh

    mesh = make_mesh(fsdp_devices)
    spread = P(tuple(mesh.axis_names))
    barrier = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, tuple(mesh.axis_names)), mesh=mesh,
                                    in_specs=spread, out_specs=P()))
    token = jax.make_array_from_callback((mesh.size,), NamedSharding(mesh, spread),
                                         lambda index: np.zeros(1, np.float32))
    jax.block_until_ready(barrier(token))
    timings = []
    for axis in (a for a in mesh.axis_names if mesh.shape[a] > 1):
        n = mesh.shape[axis]
        for nbytes in sizes:
            elems = max(n, (nbytes // 4) // n * n)  # reduce-scatter and all-to-all split it n ways
            data = jax.make_array_from_callback((mesh.size * elems,), NamedSharding(mesh, spread),
                                                lambda index, e=elems: np.ones(e, np.float32))
            for name in COLLECTIVES:
                run = jax.jit(jax.shard_map(_body(name, axis), mesh=mesh, in_specs=spread, out_specs=spread,
                                            check_vma=False))
                jax.block_until_ready(run(data))  # compile and warm up
                arrive, done = [], []
                for _ in range(repeats):
                    jax.block_until_ready(barrier(token))
                    left = time.perf_counter()
                    arrived = time.perf_counter()
                    jax.block_until_ready(run(data))
                    arrive.append(arrived - left)
                    done.append(time.perf_counter() - left)
                timings.append(Timing(name, axis, n, elems * 4, tuple(arrive), tuple(done)))
    return tuple(timings)


def _body(name: str, axis: str):
    import jax

    return {
        "all_gather": lambda x: jax.lax.all_gather(x, axis, tiled=True),
        "reduce_scatter": lambda x: jax.lax.psum_scatter(x, axis, tiled=True),
        "all_reduce": lambda x: jax.lax.psum(x, axis),
        "all_to_all": lambda x: jax.lax.all_to_all(x, axis, 0, 0, tiled=True),
    }[name]


def algorithm_bytes(name: str, nbytes: int, n: int) -> int:
    return nbytes * n if name == "all_gather" else nbytes


def bus_factor(name: str, n: int) -> float:
    return 2 * (n - 1) / n if name == "all_reduce" else (n - 1) / n


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One (collective, axis, size) across the pod."""

    collective: str
    axis: str
    axis_size: int
    nbytes: int
    time_s: float  # the collective's own time (median over repeats)
    latency_s: Mapping[int, float]  # per host (median over repeats)

    @property
    def algbw_gbytes_per_s(self) -> float:
        return algorithm_bytes(self.collective, self.nbytes, self.axis_size) / self.time_s / 1e9

    @property
    def busbw_gbytes_per_s(self) -> float:
        return self.algbw_gbytes_per_s * bus_factor(self.collective, self.axis_size)


def measurements(reports: Mapping[int, HostReport]) -> list[Measurement]:
    """The hosts' timings joined per (collective, axis, size); hosts without them are left out."""
    by_key: dict[tuple, dict[int, Timing]] = defaultdict(dict)
    for host, report in reports.items():
        for t in report.timings:
            by_key[(t.collective, t.axis, t.axis_size, t.nbytes)][host] = t
    result = []
    for (name, axis, n, nbytes), per_host in by_key.items():
        repeats = min(len(t.arrive_s) for t in per_host.values())
        own, latency = [], defaultdict(list)
        for r in range(repeats):
            latest = max(t.arrive_s[r] for t in per_host.values())
            collective = max(statistics.median(t.done_s[r] - latest for t in per_host.values()), 1e-9)
            own.append(collective)
            for host, t in per_host.items():
                latency[host].append(t.arrive_s[r] + collective)
        result.append(Measurement(name, axis, n, nbytes, statistics.median(own),
                                  {h: statistics.median(v) for h, v in latency.items()}))
    return sorted(result, key=lambda m: (m.axis, m.collective, m.nbytes))


def others_latency(m: Measurement, host: int) -> float | None:
    """The median latency of the hosts other than `host` in one measurement."""
    others = [v for h, v in m.latency_s.items() if h != host]
    return statistics.median(others) if others else None


def straggler_scores(found: Sequence[Measurement]) -> dict[int, float]:
    """Per host: median over measurements of its latency / the median of the others'."""
    ratios: dict[int, list[float]] = defaultdict(list)
    for m in found:
        for host, latency in m.latency_s.items():
            others = others_latency(m, host)
            if others is not None:
                ratios[host].append(latency / max(others, 1e-12))
    return {host: statistics.median(values) for host, values in ratios.items()}


def judge(reports: Mapping[int, HostReport], factor: float) -> tuple[dict[int, Observation], list[Measurement]]:
    """Each measured host's interconnect cell; a straggler FAILs, named."""
    found = measurements(reports)
    if not found:
        return {}, found
    scores = straggler_scores(found)
    smallest, largest = min(m.nbytes for m in found), max(m.nbytes for m in found)
    cells = {}
    for host in sorted({h for m in found for h in m.latency_s}):
        latency = statistics.median(m.latency_s[host] for m in found if m.nbytes == smallest and host in m.latency_s)
        host_bw = statistics.median(algorithm_bytes(m.collective, m.nbytes, m.axis_size) / m.latency_s[host] / 1e9
                                    for m in found if m.nbytes == largest and host in m.latency_s)
        score = scores.get(host)
        value = f"{latency * 1e3:.2f} ms, {host_bw:.2f} GB/s"
        metrics = {"latency_ms": latency * 1e3, "algbw_gbytes_per_s": host_bw}
        detail = (f"median latency {latency * 1e3:.3f} ms at {smallest} B, algorithm bandwidth "
                  f"{host_bw:.3f} GB/s at {largest} B (median over collectives and axes)")
        if score is not None:
            metrics["straggler_score"] = score
            detail += f"; {score:.2f}x the other hosts' latency (straggler at {factor:g}x)"
        if score is not None and score >= factor:
            others = statistics.median(others_latency(m, host) for m in found if m.nbytes == smallest)
            cells[host] = Observation(INTERCONNECT, FAIL, f"straggler: {latency * 1e3:.1f} ms vs {others * 1e3:.2f} ms",
                                      f"straggler: {detail}; the other hosts' median latency is "
                                      f"{others * 1e3:.3f} ms", metrics=metrics)
        else:
            cells[host] = Observation(INTERCONNECT, PASS, value, detail, metrics=metrics)
    return cells, found


def no_axis_observation() -> Observation:
    return Observation(INTERCONNECT, SKIP, "no axis > 1", "every mesh axis has one device: nothing to measure")
