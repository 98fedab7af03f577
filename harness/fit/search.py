"""The largest global batch that fits, proven by the compiler: the answer compiled, and
the next valid size up (one more sample per device) ran out of HBM.

A compile that runs out of memory is cheap and one that fits is dear: on the 2-core
machine the 1B transformer on v5litepod-16 was refused in 2-3 s and took 90-250 s to
compile where it fit. So the search comes at the answer from above, and the only fit it
means to pay for is the answer itself:

- It starts far up: 16x the requested batch.
- Above every fit: where the line through the two largest fits (or through the
  arguments' bytes at batch 0 and the largest fit) reaches HBM, rounded up.
- Below a failure whose requirement is far over HBM (over 25%): the straight-line
  estimate (regula falsi with the largest fit; without one, the line through the two
  smallest failures, or through the arguments' bytes at batch 0), rounded up.
- Once the smallest failure is near HBM: one step down at a time (after 4 such steps,
  2, 4, 8, ...; inside a bracket wider than 16 steps, the estimate again). The compiler's figure jumps just above its limit (1B on v5e-16: 16.8 GiB
  required at batch 2048, 17.9 GiB at 2064, while 2032 fits at 15.1 GiB; between 2064
  and 2112 it rises in a straight line that points at 1800), so every line through it
  lands low, on a dear fit; stepping down spends cheap refusals, and its first fit is
  the proof.

The search decides from its own probes only, so it asks the same compiles whatever
order they finish in (the disk cache then answers a repeated question whole). The
requested batch is compiled beside it; the search uses that outcome only when it would
otherwise ask for the same batch, and then waits for it.
"""

from __future__ import annotations

import dataclasses
import math

from harness.fit.compile import CompileOutcome

NEAR = 1.25           # a failure needing at most this times HBM is "near" the limit
FAR_FACTOR = 16       # the first probe, over the requested batch
WALK = 4              # one-step probes down from a near failure before the steps double
WALK_GAP = 16         # above a fit, walk only in a bracket this many steps wide; wider, estimate


@dataclasses.dataclass(frozen=True)
class Probe:
    batch_size: int
    fits: bool
    bytes: int | None     # peak memory if it fits, else the compiler's required figure
    seconds: float
    cached: bool = False  # answered from the disk cache, no compile


@dataclasses.dataclass(frozen=True)
class SearchResult:
    largest: int | None        # None: nothing fits at the floor (by default one sample per device)
    smallest_failing: int | None
    proven: bool               # both neighbours compiled (or the floor itself refused)
    probes: list[Probe]        # the requested batch first (when known), then the search's


def probe_of(outcome: CompileOutcome) -> Probe:
    if outcome.fits:
        return Probe(outcome.batch_size, True, outcome.device_peak, outcome.seconds, outcome.cached)
    return Probe(outcome.batch_size, False, outcome.oom.required_bytes, outcome.seconds, outcome.cached)


def _down(value: float, step: int) -> int:
    return int(value // step) * step


def _up(value: float, step: int) -> int:
    return int(math.ceil(value / step)) * step


def _crossing(b1: float, y1: float | None, b2: float, y2: float | None, hbm: int) -> float | None:
    """Where the line through (b1, y1) and (b2, y2) reaches `hbm`; None if it does not rise."""
    if y1 is None or y2 is None or b1 == b2 or (y2 - y1) / (b2 - b1) <= 0:
        return None
    return b1 + (hbm - y1) * (b2 - b1) / (y2 - y1)


class BatchSearch:
    """Proposes batches (`next_batch`) and takes outcomes (`record`) until the largest
    fitting batch is proven, `max_compiles` probes are spent, `max_batch` fits, or
    `floor` does not fit. `base_bytes`: per-device bytes a batch of 0 would need
    (parameters, optimizer state)."""

    def __init__(self, *, step: int, hbm_bytes: int, max_compiles: int, start: int, requested: int | None = None,
                 base_bytes: int = 0, max_batch: int = 1 << 20, floor: int | None = None):
        """`start`: the first probe. `requested`: a batch compiled beside the search,
        whose outcome it waits for rather than compile it again (None: there is none).
        `floor`: the smallest batch worth an answer (default one sample per device); the
        search never probes below it and stops, with no answer, once it is refused."""
        self.step, self.hbm, self.max_compiles, self.base = step, hbm_bytes, max_compiles, base_bytes
        self.floor = max(_up(floor, step), step) if floor is not None else step
        self.max_batch = _down(max_batch, step)
        self.start = min(max(_up(start, step), step), self.max_batch)
        self.requested = requested
        self.requested_probe: Probe | None = None
        self.probes: list[Probe] = []    # the search's own, in the order it asked
        self.spent = 0                   # compiles it asked for
        self.pending: int | None = None

    def _extreme(self, fits: bool) -> Probe | None:
        chosen = [p for p in self.probes if p.fits == fits]
        pick = max if fits else min
        return pick(chosen, key=lambda p: p.batch_size) if chosen else None

    def record(self, probe: Probe) -> None:
        if self.requested is not None and probe.batch_size == self.requested:
            self.requested_probe = probe
        if probe.batch_size == self.pending:
            self.pending = None
            self.probes.append(probe)

    @property
    def done(self) -> bool:
        lo, hi = self._extreme(True), self._extreme(False)
        low = lo.batch_size if lo else 0
        if hi is not None and (hi.batch_size - low <= self.step or hi.batch_size <= self.floor):
            return True
        if hi is None and lo is not None and lo.batch_size >= self.max_batch:
            return True
        return self.spent >= self.max_compiles

    def next_batch(self) -> int | None:
        """The next batch to compile; None while one is pending (or the requested batch,
        which it needs, is still compiling), or when done."""
        while self.pending is None and not self.done:
            candidate = self._candidate() if self.probes else self.start
            self.pending = candidate
            if candidate != self.requested or self.requested is None:
                self.spent += 1
                return candidate
            if self.requested_probe is None:
                return None
            self.record(self.requested_probe)
        return None

    def _candidate(self) -> int:
        lo, hi, step = self._extreme(True), self._extreme(False), self.step
        low = lo.batch_size if lo else 0
        if hi is None:
            fits = sorted((p for p in self.probes if p.fits), key=lambda p: p.batch_size)[-2:]
            first = (fits[0].batch_size, fits[0].bytes) if len(fits) == 2 else (0, self.base)
            guess = _crossing(*first, fits[-1].batch_size, fits[-1].bytes, self.hbm)
            wanted = _up(guess, step) if guess is not None else FAR_FACTOR * low
            return min(max(wanted, low + step, self.floor), self.max_batch)
        near = hi.bytes is not None and hi.bytes <= NEAR * self.hbm
        if near and (lo is None or hi.batch_size - low <= WALK_GAP * step):
            last_fit = max((i for i, p in enumerate(self.probes) if p.fits), default=-1)
            walked = sum(not p.fits and p.bytes is not None and p.bytes <= NEAR * self.hbm
                         for p in self.probes[last_fit + 1:])
            return max(hi.batch_size - step * 2 ** max(0, walked - WALK), low + step, self.floor)
        estimate = self._estimate(lo, hi)
        wanted = _up(estimate, step) if estimate is not None else _down((low + hi.batch_size) / 2, step)
        return min(max(wanted, low + step, self.floor), hi.batch_size - step)

    def _estimate(self, lo: Probe | None, hi: Probe) -> float | None:
        """Where memory reaches HBM below the smallest failure, by a straight line."""
        if lo is not None:
            return _crossing(lo.batch_size, lo.bytes, hi.batch_size, hi.bytes, self.hbm)
        fails = sorted((p for p in self.probes if not p.fits), key=lambda p: p.batch_size)
        line = _crossing(fails[0].batch_size, fails[0].bytes, fails[1].batch_size, fails[1].bytes,
                         self.hbm) if len(fails) > 1 else None
        return line if line is not None else _crossing(0, self.base, hi.batch_size, hi.bytes, self.hbm)

    def result(self) -> SearchResult:
        lo, hi = self._extreme(True), self._extreme(False)
        largest = lo.batch_size if lo else None
        failing = hi.batch_size if hi else None
        proven = failing is not None and failing - (largest or self.floor - self.step) == self.step
        shown = [self.requested_probe] if self.requested_probe and self.requested_probe not in self.probes else []
        return SearchResult(largest=largest, smallest_failing=failing, proven=proven, probes=shown + self.probes)


def largest_batch(compile_at, requested: CompileOutcome, *, step: int, hbm_bytes: int, max_compiles: int,
                  base_bytes: int = 0, max_batch: int = 1 << 20) -> SearchResult:
    """The search run one compile at a time, the requested batch already compiled
    (`compile_at(batch) -> CompileOutcome`)."""
    search = BatchSearch(step=step, hbm_bytes=hbm_bytes, max_compiles=max_compiles,
                         start=FAR_FACTOR * requested.batch_size, requested=requested.batch_size,
                         base_bytes=base_bytes, max_batch=max_batch)
    search.record(probe_of(requested))
    while (batch := search.next_batch()) is not None:
        search.record(probe_of(compile_at(batch)))
    return search.result()
