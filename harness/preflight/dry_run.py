"""A short run of the real training loop, before the real one: `dry_run_steps` steps
with one checkpoint save and one hard-example interval at the end, then a resume from
that save for two more steps. It runs `harness.train.loop.train` itself, in this
process, on the run's own config (model, batch, mesh, checkpoint storage), with only
the length, the intervals and the directories changed and wandb off; its console
output goes to `<run_dir>/preflight/dry_run.log`.

The collectives of a step end together on every host, so the step's wall time is the
same everywhere; what differs on a slow host is its own part: from holding a step's
results to calling the next step (metrics, logging, the next batch: `StepResults.host_step_s`,
spans with a save or a gather left out; the call itself can wait for the devices, so it
is not counted). Each host reports the median of its spans, and
a host whose median is `--slow_host_factor` times the median host's (stragglers.py's
rule) and at least `MIN_EXCESS_S` longer fails, named.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
from collections.abc import Mapping
from pathlib import Path

from harness.config import TrainConfig
from harness.preflight.results import DRY_RUN, FAIL, PASS, HostReport, Observation
from harness.preflight.storage import scratch_dir
from harness.preflight.stragglers import outliers

RESUMED_STEPS = 2
MIN_EXCESS_S = 0.25  # per step: a loaded host's jitter (tens of ms over 2 steps, seen in CI) is no finding


def dry_run_configs(config: TrainConfig, run_id: str, steps: int) -> tuple[TrainConfig, TrainConfig]:
    """The first run (save and hard-example interval at `steps`) and the resume."""
    first = config.replace(
        num_train_steps=steps, save_interval=steps, hard_example_log_interval=steps, log_interval=steps,
        track_hard_examples=True, keep=2, resume=False, overwrite=False, use_wandb=False,
        checkpoint_dir=f"{scratch_dir(config.checkpoint.dir, run_id)}/dry-run",
        run_dir=str(Path(config.run.run_dir) / "preflight" / "dry_run"),
    )
    return first, first.replace(resume=True, num_train_steps=steps + RESUMED_STEPS)


def dry_run(config: TrainConfig, run_id: str, steps: int) -> Observation:
    """Runs both; every host calls it (the loop is a collective sequence)."""
    from harness.train.loop import train

    first, resumed = dry_run_configs(config, run_id, steps)
    log_path = Path(config.run.run_dir) / "preflight" / "dry_run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        before = train(first)
        after = train(resumed)
    metrics = {"steps": float(before.end_step), "resumed_at": float(after.start_step),
               "end_step": float(after.end_step), "hard_example_intervals": float(before.hard_example_intervals),
               "seconds_first": before.wall_time_s, "seconds_resumed": after.wall_time_s}
    loss = after.final_metrics.get("loss", math.nan)
    if math.isfinite(loss):
        metrics["final_loss"] = loss
    spans = before.host_step_s + after.host_step_s
    if spans:
        metrics["host_ms_per_step"], metrics["host_steps"] = statistics.median(spans) * 1e3, float(len(spans))
    problems = []
    if steps not in before.checkpoints:
        problems.append(f"no checkpoint at step {steps} (saved: {before.checkpoints})")
    if before.hard_example_intervals < 1:
        problems.append("no hard-example interval was logged")
    if after.start_step != steps or after.end_step != steps + RESUMED_STEPS:
        problems.append(f"the resume ran steps {after.start_step}..{after.end_step}, expected "
                        f"{steps}..{steps + RESUMED_STEPS}")
    if not math.isfinite(loss):
        problems.append(f"final loss {loss}")
    detail = (f"{steps} steps, save at {steps}, {before.hard_example_intervals} hard-example interval(s), "
              f"resumed at {after.start_step} to {after.end_step}, loss {loss:.4f}"
              + (f", this host's own part of a step {metrics['host_ms_per_step']:.1f} ms (median of {len(spans)})"
                 if spans else "") + f"; log {log_path}")
    if problems:
        return Observation(DRY_RUN, FAIL, "; ".join(problems)[:120], "; ".join(problems) + f" ({detail})",
                           metrics=metrics)
    return Observation(DRY_RUN, PASS, f"{steps}+{RESUMED_STEPS} steps, resumed at {steps}", detail, metrics=metrics)


def judge_step_times(reports: Mapping[int, HostReport], factor: float) -> dict[int, Observation]:
    """The dry-run cells of hosts whose own part of a step is far longer than the others' (FAIL)."""
    measured = {h: o for h, r in reports.items()
                if (o := r.observation(DRY_RUN)) and o.status == PASS and "host_ms_per_step" in o.metrics}
    found = outliers({h: o.metrics["host_ms_per_step"] / 1e3 for h, o in measured.items()}, factor,
                     min_excess=MIN_EXCESS_S)
    return {host: dataclasses.replace(
        measured[host], status=FAIL, value=f"own part of a step {slow.ratio:.1f}x {slow.against}",
        detail=f"host {host} is {slow.ratio:.1f}x slower than {slow.against} at its own part of a training step "
               f"({slow.value * 1e3:.1f} ms vs {slow.reference * 1e3:.1f} ms from holding a step's results to "
               f"calling the next; slow at {factor:g}x); {measured[host].detail}")
        for host, slow in found.items()}
