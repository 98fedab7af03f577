"""The largest global batch that fits, proven by the compiler: the answer compiled, and
the next valid size up (one more sample per device) ran out of HBM.

Each probe is a full compile (seconds to minutes), so probes are chosen by the memory
the compiler reported: a straight line through the two measurements nearest the limit
predicts where peak memory meets HBM, and the next probe goes there (or next to the
bracket's edge). Without two measurements it doubles up or halves down.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from harness.fit.compile import CompileOutcome


@dataclasses.dataclass(frozen=True)
class Probe:
    batch_size: int
    fits: bool
    bytes: int | None     # peak memory if it fits, else the compiler's required figure
    seconds: float


@dataclasses.dataclass(frozen=True)
class SearchResult:
    largest: int | None        # None: not even one sample per device fits
    smallest_failing: int | None
    proven: bool               # both neighbours compiled (or nothing fits at the minimum)
    probes: list[Probe]


def probe_of(outcome: CompileOutcome) -> Probe:
    if outcome.fits:
        return Probe(outcome.batch_size, True, outcome.memory["peak_memory"], outcome.seconds)
    return Probe(outcome.batch_size, False, outcome.oom.required_bytes, outcome.seconds)


def _round_down(value: float, step: int) -> int:
    return int(value // step) * step


def _predict(probes: list[Probe], hbm_bytes: int, step: int) -> int | None:
    """Batch where the line through the two measured probes nearest the limit reaches HBM."""
    measured = sorted((p for p in probes if p.bytes is not None), key=lambda p: abs(p.bytes - hbm_bytes))[:2]
    if len(measured) < 2 or measured[0].batch_size == measured[1].batch_size:
        return None
    (b1, y1), (b2, y2) = sorted((p.batch_size, p.bytes) for p in measured)
    if y2 <= y1:
        return None
    return _round_down(b1 + (hbm_bytes - y1) * (b2 - b1) / (y2 - y1), step)


def _next_candidate(lo: int, hi: int | None, probes: list[Probe], hbm_bytes: int, step: int,
                    max_batch: int) -> int:
    tried = {p.batch_size for p in probes}
    guess = _predict(probes, hbm_bytes, step)
    if guess is not None:
        guess = min(max(guess, lo + step), (hi - step) if hi else max_batch)
        if guess not in tried:
            return guess
    if hi is None:
        return min(max(2 * lo, step), max_batch)
    middle = _round_down((lo + hi) / 2, step)
    return middle if lo < middle < hi else lo + step


def largest_batch(compile_at: Callable[[int], CompileOutcome], first: CompileOutcome, *,
                  step: int, hbm_bytes: int, max_compiles: int, max_batch: int = 1 << 20) -> SearchResult:
    """Search from an already compiled batch `first`; `step` is the device count (batches
    must divide evenly). Stops after `max_compiles` new compiles, unproven if it must."""
    probes = [probe_of(first)]
    lo, hi = (first.batch_size, None) if first.fits else (0, first.batch_size)
    compiles = 0
    while (hi is None or hi - lo > step) and compiles < max_compiles:
        if hi is None and lo >= max_batch:
            break
        candidate = _next_candidate(lo, hi, probes, hbm_bytes, step, max_batch)
        probe = probe_of(compile_at(candidate))
        probes.append(probe)
        compiles += 1
        if probe.fits:
            lo = max(lo, candidate)
        else:
            hi = candidate if hi is None else min(hi, candidate)
    proven = hi is not None and hi - lo == step
    return SearchResult(largest=lo or None, smallest_failing=hi, proven=proven, probes=probes)
