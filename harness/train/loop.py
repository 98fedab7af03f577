"""The mock training run, top to bottom: `train(config)`, then the loop of steps.

Run it:  python -m harness.train --config cpu-8-devices --num_train_steps 100
(`harness-train` is the same entry point; flags are in harness/train/cli.py.)

`train` reads in the order a run happens: build the parts (parts.py: console, mesh,
input pipeline, checkpoint store, hard-example reporter), start the host watchdog,
print the banner, hear SIGTERM, find the first state (resume.py: fresh or restored),
run the steps (`_run_steps`: results read back in results.py, checkpoints saved
through resume.py), then close the store and write the summary.

At most `max_steps_in_flight` steps are dispatched ahead of the host: each finished
step's metrics are read back before more work is queued. This keeps host memory flat
and avoids an abort seen with 8 fake CPU devices on 2 cores when many steps are queued
(about 1 run in 4 died after 40 s: XLA's all-gather rendezvous, "only 7 of 8 arrived";
0 in 15 when each step was read back). The next batches are built in a
prefetch thread (harness/train/prefetch.py); checkpoints, hard-example gathers and the
preemption check happen at the same steps on every host.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import jax

from harness.config import TrainConfig
from harness.errors import HostLostError, first_line
from harness.outputs.run_outputs import RunOutputs, RunSummary
from harness.runtime.preemption import PreemptionWatch
from harness.runtime.schedule import itstime
from harness.runtime.watchdog import DONE, FAILED, SILENCE_FRACTION, HostWatchdog
from harness.train.parts import BANNER_RULE, RunParts, build_parts, print_banner
from harness.train.prefetch import Prefetcher
from harness.train.results import InFlight, StepResults
from harness.train.resume import initial_state, save_checkpoint
from harness.train.step import TrainState, make_train_step


def train(config: TrainConfig) -> RunSummary:
    """The whole run on this host. The host watchdog watches it from the first collective
    (the restore) to the last (the final save); a host that fails tells the others."""
    with build_parts(config) as parts:
        watchdog = HostWatchdog(silence_s=SILENCE_FRACTION * config.distributed.heartbeat_timeout).start()
        outcome = FAILED + "the run ended early"
        try:
            started = time.perf_counter()
            print_banner(parts)
            watch = PreemptionWatch()  # from here on a SIGTERM is heard, during the restore too
            try:
                state, start_step = initial_state(parts)
                outputs = RunOutputs(config, parts.console, start_step=start_step)
                results = StepResults(parts, outputs)
                state, end_step, last, preempted = _run_steps(parts, state, start_step, results, watch)
            except jax.errors.JaxRuntimeError as err:
                if jax.process_count() == 1:
                    raise  # not a lost host: a plain runtime error
                watchdog.wait_for_verdict()  # names a dead host and exits, if there is one
                raise HostLostError(f"host {jax.process_index()}: a collective failed while every host "
                                    f"still answers: {first_line(err)}") from err
            finally:
                watch.close()

            parts.store.close()
            parts.console.print(BANNER_RULE)
            if preempted:
                parts.console.print(f"Preempted (SIGTERM): all hosts stopped at step {end_step} and saved a "
                                    f"checkpoint there; rerun with --resume to continue.")
            else:
                parts.console.print("Training complete!")
            summary = RunSummary(
                start_step=start_step, end_step=end_step,
                wall_time_s=time.perf_counter() - started, checkpoints=list(parts.store.saved_steps),
                run_dir=str(Path(config.run.run_dir)), checkpoint_dir=config.checkpoint.dir, final_metrics=last,
                hard_example_intervals=parts.reporter.intervals_logged if parts.reporter else 0,
                preempted=preempted, host_step_s=tuple(results.host_step_s),
            )
            outputs.finish(summary)
            parts.console.print(BANNER_RULE)
            outcome = DONE
            return summary
        except BaseException as err:
            outcome = FAILED + first_line(err)
            raise
        finally:
            watchdog.stop(outcome)


def _run_steps(parts: RunParts, state: TrainState, start_step: int, results: StepResults,
               watch: PreemptionWatch) -> tuple[TrainState, int, dict[str, float], bool]:
    """Runs steps until the end or an agreed preemption; returns the state, the step
    count reached, the last metrics and whether it stopped early."""
    config = parts.config
    train_step = make_train_step(config, parts.mesh)
    in_flight: collections.deque[InFlight] = collections.deque()
    last: dict[str, float] = {}
    data_state = parts.pipeline.state()  # after the last batch a step took: what a save records
    parts.console.print("Starting training loop...")
    batches = Prefetcher(parts.batches_for, range(start_step, config.run.num_train_steps),
                         depth=config.run.max_steps_in_flight)
    try:
        for step, (local_batch, global_batch, data_state) in batches:
            results.before_dispatch()
            state, metrics = train_step(state, global_batch)
            in_flight.append(InFlight(step, metrics, local_batch))
            if len(in_flight) >= config.run.max_steps_in_flight:
                last = results.finish(in_flight.popleft())
            stop = watch.should_stop(step)
            if stop or itstime(step + 1, config.checkpoint.save_interval, last=config.run.num_train_steps):
                last = results.finish_all(in_flight) or last  # host-side state must match the saved step
                save_checkpoint(parts, step + 1, state, data_state)
                results.leave_out_this_span()
            if stop:
                return state, step + 1, last, True
    finally:
        batches.close()
    return state, max(start_step, config.run.num_train_steps), results.finish_all(in_flight) or last, False
