"""The mock training loop: data -> jitted FSDP step -> metrics, checkpoints.

Run it:  python -m harness.train --config cpu-8-devices --num_train_steps 100
(`harness-train` is the same entry point; flags are in harness/train/cli.py.)

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
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax

from harness.runtime.agree import gather_json
from harness.runtime.checkpoint import CheckpointStore, check_resume_compatible, resume_fingerprint
from harness.config import TrainConfig
from harness.mock.data import Batch, MockDataset
from harness.errors import CheckpointSaveError, HostLostError, NonFiniteStateError, UsageError, first_line
from harness.hard_examples.reporter import HardExampleReporter
from harness.hard_examples.tracker import HardExampleTracker
from harness.runtime.mesh import host_local_rows_of, make_global_batch, make_mesh
from harness.runtime.preemption import PreemptionWatch
from harness.train.pipeline import InputPipeline, PipelineStateError
from harness.train.prefetch import Prefetcher
from harness.outputs.run_outputs import RunOutputs, RunSummary
from harness.outputs.sinks import SCALAR_METRICS, Console
from harness.runtime.schedule import itstime
from harness.train.step import TrainState, abstract_state, init_state, make_train_step
from harness.runtime.watchdog import DONE, FAILED, SILENCE_FRACTION, HostWatchdog

BANNER_RULE = "=" * 80
DATA_ITEM = "data"  # in the checkpoint metadata: every host's input pipeline state
NONFINITE_WATCHED = ("loss", "grad_norm", "param_norm")


class _InFlight(NamedTuple):
    step: int
    metrics: dict[str, jax.Array]
    local_batch: Batch


def print_banner(console: Console, config: TrainConfig, mesh: jax.sharding.Mesh) -> None:
    console.print(BANNER_RULE)
    console.print("MOCK TRAINING")
    console.print(BANNER_RULE)
    console.print("Configuration:")
    rows = [
        ("Steps", config.run.num_train_steps),
        ("Batch size", config.data.batch_size),
        ("Log interval", config.run.log_interval),
        ("Track hard examples", config.hard_examples.enabled),
        ("Checkpoint dir", config.checkpoint.dir),
        ("Run dir", config.run.run_dir),
        ("Processes", f"{jax.process_count()} x {jax.local_device_count()} {jax.default_backend()} devices"),
        ("Mesh", ", ".join(f"{k}={v}" for k, v in mesh.shape.items())),
    ]
    for label, value in rows:
        console.print(f"  {label}: {value}")
    console.print(BANNER_RULE)


class Trainer:
    """Owns one run's objects; `run()` trains from the start or latest checkpoint."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.console = Console.for_this_process()
        self.mesh = make_mesh(config.mesh.fsdp_devices)
        self.dataset = MockDataset(
            config.data, config.run.seed, jax.process_index(), jax.process_count()
        )
        self.pipeline = InputPipeline(self.dataset)
        self._data_state = self.pipeline.state()  # after the last batch a step took
        self.store = CheckpointStore(
            config.checkpoint.dir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
            timeout_s=config.checkpoint.timeout,
        )
        self.run_dir = Path(config.run.run_dir)
        self.reporter = self._make_reporter() if config.hard_examples.enabled else None
        self.skipped_updates = 0
        # Per step, seconds from this host holding a step's results to calling the next step
        # (the call itself can wait for the devices): its own part of the step, before it
        # enters the next collective (the preflight compares it across hosts). Spans with a
        # save or a gather are left out.
        self.host_step_s: list[float] = []
        self._results_at: float | None = None

    def _make_reporter(self) -> HardExampleReporter:
        config = self.config
        tracker = HardExampleTracker(
            config.hard_examples.buffer_size, self.dataset.tokenizer, host=jax.process_index(),
            resize_hw=(config.hard_examples.image_size, config.hard_examples.image_size),
            high_loss_threshold=config.hard_examples.high_loss_threshold,
        )
        return HardExampleReporter(
            tracker, interval=config.hard_examples.log_interval, k=config.hard_examples.buffer_size,
            total_steps=config.run.num_train_steps,
        )

    def _initial_state(self) -> tuple[TrainState, int]:
        config = self.config
        if not config.checkpoint.resume:
            return init_state(config, self.mesh), 0
        restored = self.store.restore_latest(abstract_state(config, self.mesh), self._check_resume_settings,
                                             on_skip=self._report_skipped)
        damaged = list(self.store.skipped_steps)
        if restored is None and damaged and not config.checkpoint.allow_fresh_start:
            raise UsageError(
                f"no valid checkpoint in {config.checkpoint.dir} (damaged: steps "
                f"{', '.join(map(str, damaged))}); nothing was changed. Pass --allow_fresh_start "
                f"to start from step 0 (damaged steps are kept as they are, marked with a DAMAGED file)"
            )
        for marker in self.store.mark_damaged():
            self.console.print(f"WARNING: damaged checkpoint set aside (kept, never restored or saved over): {marker}")
        if restored is None:
            self.console.print("No valid checkpoint to resume from: starting at step 0")
            self._warn_of_unsaved_steps(0)
            return init_state(config, self.mesh), 0
        state, meta = restored
        step = int(jax.device_get(state.step))
        self._restore_pipeline(meta, step)
        if self.reporter is not None:
            problem = self.reporter.restore_state(meta.get("hard_examples"), step=step,
                                                  read_records=self.dataset.records)
            if problem:
                self.console.print(f"WARNING: {problem}")
        self.console.print(f"Resumed from checkpoint at step {step}"
                           + (f" (newer damaged steps skipped: {', '.join(map(str, damaged))})" if damaged else ""))
        self._warn_of_unsaved_steps(step)
        return state, step

    def _restore_pipeline(self, meta: dict, step: int) -> None:
        """Puts the input pipeline where it stood at the save: this host's own saved
        state, or, on another process count, the state all hosts shared."""
        saved = meta.get(DATA_ITEM)
        where = f"{self.config.checkpoint.dir} step {step}"
        if not isinstance(saved, list) or not saved:
            raise UsageError(f"cannot resume from {where}: it holds no input pipeline state "
                             f"(written by an older harness); start over with --overwrite")
        host, hosts = jax.process_index(), jax.process_count()
        if len(saved) == hosts:
            state = saved[host]
        elif all(s == saved[0] for s in saved):
            state = saved[0]
        else:
            raise UsageError(f"cannot resume from {where} on {hosts} processes: its {len(saved)} hosts' "
                             f"input pipelines stood at different positions")
        try:
            self.pipeline.restore(state)
        except PipelineStateError as err:
            raise UsageError(f"cannot resume from {where}: {err}") from None
        self._data_state = self.pipeline.state()

    def _check_resume_settings(self, step: int, meta: dict) -> None:
        saved = meta.get("resume")
        check_resume_compatible(saved if isinstance(saved, dict) else {}, resume_fingerprint(self.config),
                                where=f"{self.config.checkpoint.dir} step {step}")

    def _report_skipped(self, step: int, problem: str) -> None:
        self.console.print(f"WARNING: checkpoint step {step} is damaged ({problem}); trying an older one")

    def _warn_of_unsaved_steps(self, start_step: int) -> None:
        """A damaged checkpoint keeps its step number: this run cannot save there."""
        held = [step for step in sorted(self.store.marked_steps) if start_step < step <= self.config.run.num_train_steps]
        if held:
            self.console.print(f"WARNING: no checkpoint will be saved at step {', '.join(map(str, held))}: damaged "
                               f"checkpoints hold those steps in {self.config.checkpoint.dir} (delete them to free "
                               f"the steps)")

    def _checkpoint_meta(self, step: int) -> dict[str, Any]:
        """JSON saved with the state. Every host calls it (the tracker state is gathered)."""
        meta: dict[str, Any] = {"step": step, "resume": resume_fingerprint(self.config),
                                DATA_ITEM: gather_json(self._data_state)}
        if self.reporter is not None:
            meta["hard_examples"] = self.reporter.checkpoint_state(step)
        return meta

    def _save(self, step: int, state: TrainState, in_flight: collections.deque, outputs: RunOutputs) -> dict:
        """Finishes the steps in flight (so host-side state matches `step`), then saves."""
        last = {}
        while in_flight:
            last = self._finish_step(in_flight.popleft(), outputs)
        self.store.save(step, state, self._checkpoint_meta(step))
        self._results_at = None
        return last

    def _batches_for(self, step: int) -> tuple[Batch, Batch, dict]:
        """The next host-local batch, its global array, and the pipeline state after it
        (runs in the prefetch thread, once per step, in step order)."""
        local_batch = next(self.pipeline)
        return local_batch, make_global_batch(local_batch, self.mesh), self.pipeline.state()

    def _finish_step(self, pending: _InFlight, outputs: RunOutputs) -> dict[str, float]:
        fetched = jax.device_get({name: pending.metrics[name] for name in SCALAR_METRICS})
        self._results_at = time.perf_counter()
        scalars = {name: float(fetched[name]) for name in SCALAR_METRICS}  # device_get sorts keys
        log = itstime(pending.step, self.config.run.log_interval, last=self.config.run.num_train_steps - 1, first=True)
        outputs.step_finished(pending.step, scalars, pending.metrics, log=log)
        self._check_finite(pending, scalars)
        self.store.raise_failed_save()
        if self.reporter is not None:
            losses, sample_ids = host_local_rows_of([pending.metrics["per_sample_loss"], pending.metrics["sample_id"]])
            self.reporter.observe(pending.step, pending.local_batch, losses, sample_ids)
            result = self.reporter.end_of_step(pending.step)
            if result is not None:
                self._results_at = None
                outputs.hard_examples_gathered(result)
        return scalars

    def _check_finite(self, pending: _InFlight, scalars: dict[str, float]) -> None:
        """The non-finite policy (`--on_nonfinite`). The scalars are replicated, so every
        host reaches the same verdict at the same step."""
        bad = [f"{name}={scalars[name]}" for name in NONFINITE_WATCHED if not math.isfinite(scalars[name])]
        if not bad:
            return
        if "update_skipped" in pending.metrics:
            self.skipped_updates += 1
            self.console.print(f"WARNING: step {pending.step}: non-finite {', '.join(bad)}; update skipped "
                               f"(--on_nonfinite skip; {self.skipped_updates} skipped so far)")
            return
        saved = ", ".join(map(str, self.store.saved_steps)) or "none"
        raise NonFiniteStateError(
            f"step {pending.step}: non-finite {', '.join(bad)}; stopped without saving this state "
            f"(checkpoints written by this run: {saved}; none was pruned for it). "
            f"--on_nonfinite skip drops such updates instead"
        )

    def run(self) -> RunSummary:
        """The whole run, watched by the host watchdog from the first collective (the
        restore) to the last (the final save); a host that fails tells the others."""
        watchdog = HostWatchdog(silence_s=SILENCE_FRACTION * self.config.distributed.heartbeat_timeout).start()
        outcome = FAILED + "the run ended early"
        try:
            summary = self._run(watchdog)
            outcome = DONE
            return summary
        except BaseException as err:
            outcome = FAILED + first_line(err)
            raise
        finally:
            watchdog.stop(outcome)

    def _run(self, watchdog: HostWatchdog) -> RunSummary:
        config = self.config
        started = time.perf_counter()
        print_banner(self.console, config, self.mesh)
        watch = PreemptionWatch()  # from here on a SIGTERM is heard, during the restore too
        try:
            state, start_step = self._initial_state()
            outputs = RunOutputs(config, self.console, start_step=start_step)
            state, end_step, last, preempted = self._loop(state, start_step, outputs, watch)
        except jax.errors.JaxRuntimeError as err:
            if jax.process_count() == 1:
                raise  # not a lost host: a plain runtime error
            watchdog.wait_for_verdict()  # names a dead host and exits, if there is one
            raise HostLostError(f"host {jax.process_index()}: a collective failed while every host "
                                f"still answers: {first_line(err)}") from err
        finally:
            watch.close()
        self.store.close()
        self.console.print(BANNER_RULE)
        if preempted:
            self.console.print(
                f"Preempted (SIGTERM): all hosts stopped at step {end_step} and saved a "
                f"checkpoint there; rerun with --resume to continue."
            )
        else:
            self.console.print("Training complete!")
        summary = RunSummary(
            start_step=start_step, end_step=end_step,
            wall_time_s=time.perf_counter() - started, checkpoints=list(self.store.saved_steps),
            run_dir=str(self.run_dir), checkpoint_dir=config.checkpoint.dir, final_metrics=last,
            hard_example_intervals=self.reporter.intervals_logged if self.reporter else 0,
            preempted=preempted, host_step_s=tuple(self.host_step_s),
        )
        outputs.finish(summary)
        self.console.print(BANNER_RULE)
        return summary

    def _loop(self, state: TrainState, start_step: int, outputs: RunOutputs, watch: PreemptionWatch):
        """Runs steps until the end or an agreed preemption; returns the state, the step
        count reached, the last metrics and whether it stopped early."""
        config = self.config
        train_step = make_train_step(config, self.mesh)
        in_flight: collections.deque[_InFlight] = collections.deque()
        last: dict[str, float] = {}
        self.console.print("Starting training loop...")
        batches = Prefetcher(self._batches_for, range(start_step, config.run.num_train_steps),
                             depth=config.run.max_steps_in_flight)
        try:
            for step, (local_batch, global_batch, self._data_state) in batches:
                if self._results_at is not None:
                    self.host_step_s.append(time.perf_counter() - self._results_at)
                    self._results_at = None
                state, metrics = train_step(state, global_batch)
                in_flight.append(_InFlight(step, metrics, local_batch))
                if len(in_flight) >= config.run.max_steps_in_flight:
                    last = self._finish_step(in_flight.popleft(), outputs)
                stop = watch.should_stop(step)
                if stop or itstime(step + 1, config.checkpoint.save_interval, last=config.run.num_train_steps):
                    last = self._save(step + 1, state, in_flight, outputs) or last
                if stop:
                    return state, step + 1, last, True
        finally:
            batches.close()
        while in_flight:
            last = self._finish_step(in_flight.popleft(), outputs)
        return state, max(start_step, config.run.num_train_steps), last, False


def train(config: TrainConfig) -> RunSummary:
    trainer = Trainer(config)
    try:
        return trainer.run()
    except (HostLostError, CheckpointSaveError):
        raise  # no waiting on orbax here: its barriers could hang on the dead or failed peer
    except BaseException:
        trainer.store.close()  # orbax's threads must not outlive a failed run
        raise

