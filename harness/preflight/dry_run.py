"""A short run of the real training loop, before the real one: `dry_run_steps` steps
with one checkpoint save and one hard-example interval at the end, then a resume from
that save for two more steps. It runs `harness.train.loop.train` itself, in this
process, on the run's own config (model, batch, mesh, checkpoint storage), with only
the length, the intervals and the directories changed and wandb off; its console
output goes to `<run_dir>/preflight/dry_run.log`.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from harness.config import TrainConfig
from harness.preflight.results import DRY_RUN, FAIL, PASS, Observation
from harness.preflight.storage import scratch_dir

RESUMED_STEPS = 2


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
              f"resumed at {after.start_step} to {after.end_step}, loss {loss:.4f}; log {log_path}")
    if problems:
        return Observation(DRY_RUN, FAIL, "; ".join(problems)[:120], "; ".join(problems) + f" ({detail})",
                           metrics=metrics)
    return Observation(DRY_RUN, PASS, f"{steps}+{RESUMED_STEPS} steps, resumed at {steps}", detail, metrics=metrics)
