"""A step's results, once the host holds them: read back, logged, checked, tracked.

`finish` runs once per step, in step order, on every host: it reads the replicated
scalars back, hands them to the run's outputs, applies the non-finite policy
(`--on_nonfinite`; the scalars are replicated, so every host reaches the same verdict at
the same step), raises a checkpoint save that failed in the background, and feeds the
hard-example tracker (whose gathers are collectives at the same steps on every host).
It also times this host's own part of each step, for preflight's straggler check.
"""

from __future__ import annotations

import collections
import math
import time
from typing import NamedTuple

import jax

from harness.errors import NonFiniteStateError
from harness.mock.data import Batch
from harness.outputs.run_outputs import RunOutputs
from harness.outputs.sinks import SCALAR_METRICS
from harness.runtime.mesh import host_local_rows_of
from harness.runtime.schedule import itstime
from harness.train.parts import RunParts

NONFINITE_WATCHED = ("loss", "grad_norm", "param_norm")


class InFlight(NamedTuple):
    """A step dispatched to the devices whose results the host has not read yet."""
    step: int
    metrics: dict[str, jax.Array]
    local_batch: Batch


class StepResults:
    """One run's finished steps (every host finishes every step, in step order)."""

    def __init__(self, parts: RunParts, outputs: RunOutputs):
        self._parts = parts
        self._outputs = outputs
        self.skipped_updates = 0
        # Per step, seconds from this host holding a step's results to calling the next step
        # (the call itself can wait for the devices): its own part of the step, before it
        # enters the next collective (the preflight compares it across hosts). Spans with a
        # save or a gather are left out.
        self.host_step_s: list[float] = []
        self._results_at: float | None = None

    def before_dispatch(self) -> None:
        """Called right before the next step is dispatched: ends this host's span."""
        if self._results_at is not None:
            self.host_step_s.append(time.perf_counter() - self._results_at)
            self._results_at = None

    def leave_out_this_span(self) -> None:
        """The span since the last results held a save: not this host's own step work."""
        self._results_at = None

    def finish_all(self, in_flight: collections.deque[InFlight]) -> dict[str, float]:
        """Finishes every step in flight, oldest first; the last one's scalars, or {}."""
        last: dict[str, float] = {}
        while in_flight:
            last = self.finish(in_flight.popleft())
        return last

    def finish(self, pending: InFlight) -> dict[str, float]:
        run, reporter = self._parts.config.run, self._parts.reporter
        fetched = jax.device_get({name: pending.metrics[name] for name in SCALAR_METRICS})
        self._results_at = time.perf_counter()
        scalars = {name: float(fetched[name]) for name in SCALAR_METRICS}  # device_get sorts keys
        log = itstime(pending.step, run.log_interval, last=run.num_train_steps - 1, first=True)
        self._outputs.step_finished(pending.step, scalars, pending.metrics, log=log)
        bad = [f"{name}={scalars[name]}" for name in NONFINITE_WATCHED if not math.isfinite(scalars[name])]
        if bad:
            self._nonfinite(pending, bad)
        self._parts.store.raise_failed_save()
        if reporter is not None:
            losses, sample_ids = host_local_rows_of([pending.metrics["per_sample_loss"], pending.metrics["sample_id"]])
            reporter.observe(pending.step, pending.local_batch, losses, sample_ids)
            result = reporter.end_of_step(pending.step)
            if result is not None:
                self._results_at = None
                self._outputs.hard_examples_gathered(result)
        return scalars

    def _nonfinite(self, pending: InFlight, bad: list[str]) -> None:
        """`--on_nonfinite skip`: the step already kept the old state, count and warn;
        otherwise stop, saving nothing of this state."""
        if "update_skipped" in pending.metrics:
            self.skipped_updates += 1
            self._parts.console.print(f"WARNING: step {pending.step}: non-finite {', '.join(bad)}; update skipped "
                                      f"(--on_nonfinite skip; {self.skipped_updates} skipped so far)")
            return
        saved = ", ".join(map(str, self._parts.store.saved_steps)) or "none"
        raise NonFiniteStateError(
            f"step {pending.step}: non-finite {', '.join(bad)}; stopped without saving this state "
            f"(checkpoints written by this run: {saved}; none was pruned for it). "
            f"--on_nonfinite skip drops such updates instead"
        )
