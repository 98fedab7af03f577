"""The largest global batch that fits, proven by the compiler: the answer compiled, and
the next valid size up (one more sample per device) ran out of HBM.

Each probe is a full compile: seconds when it runs out of memory, up to minutes when it
only just fits (the compiler works hardest there). So probes are placed by the memory
the compiler reported: above every fit, a line through the two largest fits predicts
where the peak meets HBM; inside a bracket, regula falsi between the fit's peak and the
failure's required bytes, with bisection whenever that stops halving the bracket.
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


def _extrapolate(probes: list[Probe], hbm_bytes: int, step: int) -> int | None:
    """Where the line through the two largest fitting batches reaches HBM."""
    fits = sorted((p for p in probes if p.fits), key=lambda p: p.batch_size)[-2:]
    if len(fits) < 2 or fits[1].bytes <= fits[0].bytes:
        return None
    (b1, y1), (b2, y2) = ((p.batch_size, p.bytes) for p in fits)
    return _round_down(b2 + (hbm_bytes - y2) * (b2 - b1) / (y2 - y1), step)


def _interpolate(lo: Probe, hi: Probe, hbm_bytes: int, step: int, fits_in_a_row: int) -> int | None:
    """Regula falsi inside the bracket: where the straight line from the fit's peak to
    the failure's required bytes crosses HBM. (The compiler's required figure counts
    differently from its peak, so this is a guess that keeps the bracket, not a model.)
    Illinois rule: each further fit in a row halves the failure's weight, so the probes
    stop creeping up from below."""
    if hi.bytes is None or hi.bytes <= hbm_bytes or lo.bytes >= hbm_bytes:
        return None
    below, above = hbm_bytes - lo.bytes, (hi.bytes - hbm_bytes) / 2 ** max(0, fits_in_a_row - 1)
    fraction = below / (below + above)
    return _round_down(lo.batch_size + fraction * (hi.batch_size - lo.batch_size), step)


def _next_candidate(lo: Probe | None, hi: Probe | None, probes: list[Probe], widths: list[int],
                    hbm_bytes: int, step: int, max_batch: int) -> int:
    """Above every fit: extrapolate (or double). In a bracket: interpolate, bisecting
    when the last two probes did not halve it. Below every failure: halve (an
    out-of-memory compile takes seconds)."""
    low = lo.batch_size if lo else 0
    if hi is None:
        guess = _extrapolate(probes, hbm_bytes, step)
        return min(max(guess or 2 * low, low + step), max_batch)
    middle = max(_round_down((low + hi.batch_size) / 2, step), step)
    if lo is None:
        return middle
    fits_in_a_row = next((i for i, p in enumerate(reversed(probes)) if not p.fits), len(probes))
    guess = _interpolate(lo, hi, hbm_bytes, step, fits_in_a_row)
    stalled = len(widths) >= 3 and widths[-1] > widths[-3] / 2
    if guess is None or stalled:
        return middle if low < middle < hi.batch_size else low + step
    return min(max(guess, low + step), hi.batch_size - step)


def largest_batch(compile_at: Callable[[int], CompileOutcome], first: CompileOutcome, *,
                  step: int, hbm_bytes: int, max_compiles: int, max_batch: int = 1 << 20) -> SearchResult:
    """Search from an already compiled batch `first`; `step` is the device count (batches
    must divide evenly). Stops after `max_compiles` new compiles, unproven if it must."""
    probes = [probe_of(first)]
    lo, hi = (probes[0], None) if first.fits else (None, probes[0])
    widths: list[int] = []
    while (hi is None or hi.batch_size - (lo.batch_size if lo else 0) > step) and len(probes) <= max_compiles:
        if hi is None and lo.batch_size >= max_batch:
            break
        candidate = _next_candidate(lo, hi, probes, widths, hbm_bytes, step, max_batch)
        probe = probe_of(compile_at(candidate))
        probes.append(probe)
        if probe.fits:
            lo = probe if lo is None or candidate > lo.batch_size else lo
        else:
            hi = probe if hi is None or candidate < hi.batch_size else hi
        if hi is not None:
            widths.append(hi.batch_size - (lo.batch_size if lo else 0))
    largest = lo.batch_size if lo else None
    failing = hi.batch_size if hi else None
    proven = failing is not None and failing - (largest or 0) == step
    return SearchResult(largest=largest, smallest_failing=failing, proven=proven, probes=probes)
