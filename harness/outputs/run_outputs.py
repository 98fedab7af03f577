"""Everything a run writes besides checkpoints, in one place.

Console lines and the progress bar, `metrics.jsonl`, wandb, the optional per-sample loss
record, hard-example blocks, JSON and contact sheets, and at the end the loss curve and
a summary. This is the run's one writer: every host makes every call with the same
arguments, and the host-0 checks live in here and in the sinks it owns (big_vision's
metric writer style), never at a call site.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

from harness.outputs.background import BackgroundWriter
from harness.config import TrainConfig
from harness.hard_examples.gather import GatherResult
from harness.outputs.hard_example_report import format_block, result_to_json
from harness.outputs.loss_curve import save_loss_curve
from harness.outputs.pictures import save_contact_sheet
from harness.outputs.progress import Progress
from harness.outputs.sinks import Console, MetricsFile, PerSampleLossFile, format_metrics_line, read_metrics
from harness.outputs.wandb_sink import WandbSink

_INTERVAL_FILE = re.compile(r"step_(\d+)\.json$")
CURVE_METRICS = ("loss", "max_per_sample_loss")
OUTPUTS_TIMEOUT_S = 300.0


@dataclasses.dataclass
class RunSummary:
    start_step: int
    end_step: int
    wall_time_s: float
    checkpoints: list[int]
    run_dir: str
    checkpoint_dir: str
    final_metrics: dict[str, float]
    hard_example_intervals: int = 0
    preempted: bool = False
    host_step_s: tuple[float, ...] = ()  # this host's own part of each step (StepResults.host_step_s)

    @property
    def steps_run(self) -> int:
        return self.end_step - self.start_step

    @property
    def steps_per_s(self) -> float:
        return self.steps_run / self.wall_time_s if self.wall_time_s > 0 else 0.0


class RunOutputs:
    def __init__(self, config: TrainConfig, console: Console, *, start_step: int):
        self.config = config
        self.console = console
        self.run_dir = Path(config.run.run_dir)
        self.is_primary = primary = console.is_primary
        self.metrics_file = MetricsFile(self.run_dir / "metrics.jsonl", is_primary=primary, start_step=start_step)
        # Every step's loss, for the loss curve (metrics.jsonl has the logged steps only).
        self.loss_history = MetricsFile(self.run_dir / "loss_history.jsonl", is_primary=primary,
                                        start_step=start_step)
        self.loss_record = (
            PerSampleLossFile(self.run_dir / "per_sample_losses.jsonl", is_primary=primary, start_step=start_step)
            if config.hard_examples.record_per_sample_losses else None
        )
        self.progress = Progress(is_primary=primary, total=config.run.num_train_steps, initial=start_step)
        console.attach(self.progress)
        self.writer = BackgroundWriter()  # PNGs and wandb calls, in order, off the loop
        # wandb starts on the writer too (importing it and starting its service takes
        # ~1 s); every later wandb call is queued behind this one.
        self.wandb: WandbSink | None = None
        self.writer.submit(self._open_wandb, WandbSink, dict(
            enabled=config.wandb.enabled, project=config.wandb.project,
            run_name=config.wandb.run_name or None, run_dir=self.run_dir,
            config=dataclasses.asdict(config), is_primary=primary,
            resume=config.checkpoint.resume and start_step > 0,
        ))

    def _open_wandb(self, sink: type[WandbSink], arguments: dict[str, Any]) -> None:
        self.wandb = sink(**arguments)

    def _to_wandb(self, method: str, *args: Any) -> None:
        """Runs on the writer thread, after `_open_wandb`."""
        if self.wandb is not None:
            getattr(self.wandb, method)(*args)

    def step_finished(self, step: int, scalars: Mapping[str, float], metrics: Mapping[str, Any], *, log: bool) -> None:
        """Per finished step; `metrics` holds the device arrays (for the loss record)."""
        self.progress.advance(scalars["loss"])
        self.loss_history.write(step, {k: scalars[k] for k in CURVE_METRICS})
        if self.loss_record is not None:
            self.loss_record.write(step, metrics["sample_id"], metrics["per_sample_loss"])
        if log:
            rate = self.progress.rate_since_last(step)
            self.console.print(format_metrics_line(step, scalars, steps_per_s=rate))
            self.metrics_file.write(step, scalars)
            self.writer.submit(self._to_wandb, "log_metrics", step, dict(scalars))

    def hard_examples_gathered(self, result: GatherResult) -> None:
        """One interval's hard examples (the same result on every host): the console
        block, and on process 0 `step_<N>.json`, then the contact sheet PNG and the
        wandb table, rendered on the writer thread."""
        for line in format_block(result):
            self.console.print(line)
        if not self.is_primary:
            return
        folder = self.run_dir / "hard_examples"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"step_{result.step}.json").write_text(json.dumps(result_to_json(result), indent=1) + "\n")
        self.writer.submit(self._write_pictures, result, folder / f"step_{result.step}.png")

    def _write_pictures(self, result: GatherResult, path: Path) -> None:
        """On the writer thread: one contact sheet, to its PNG and to wandb."""
        sheet = save_contact_sheet(result.examples, path, step=result.step, threshold=result.stats.threshold)
        self._to_wandb("log_hard_examples", result.step, result.examples, result.stats, sheet)

    def hard_example_steps(self) -> list[int]:
        """Every interval logged in this run dir (before a resume too)."""
        folder = self.run_dir / "hard_examples"
        found = (_INTERVAL_FILE.search(p.name) for p in folder.glob("step_*.json")) if folder.exists() else ()
        return sorted(int(m.group(1)) for m in found if m)

    def finish(self, summary: RunSummary) -> None:
        self.progress.close()
        self.writer.submit(self._to_wandb, "log_summary", {
            "steps_run": summary.steps_run, "wall_time_s": summary.wall_time_s,
            "steps_per_s": summary.steps_per_s, "preempted": summary.preempted,
        })
        self.writer.submit(self._to_wandb, "finish")
        self.writer.close(timeout_s=OUTPUTS_TIMEOUT_S)
        if self.is_primary:
            history = self.run_dir / "loss_history.jsonl"
            rows = read_metrics(history) if history.exists() else []
            save_loss_curve(rows, self.run_dir / "loss_curve.png", hard_example_steps=self.hard_example_steps())
        for line in summary_lines(summary, self):
            self.console.print(line)


def summary_lines(summary: RunSummary, outputs: RunOutputs) -> list[str]:
    run_dir = outputs.run_dir
    checkpoints = ", ".join(map(str, summary.checkpoints)) or "none"
    if outputs.wandb is not None and outputs.wandb.url:
        wandb_line = outputs.wandb.url
    elif outputs.wandb is not None and outputs.wandb.run_path:
        wandb_line = f"{outputs.wandb.run_path} (offline; upload with: wandb sync {outputs.wandb.run_path})"
    else:
        wandb_line = "off"
    return [
        "Summary:",
        f"  Steps: {summary.start_step} -> {summary.end_step} ({summary.steps_run} run)",
        f"  Wall time: {summary.wall_time_s:.1f} s ({summary.steps_per_s:.1f} steps/s)",
        f"  Checkpoints written: {checkpoints} in {summary.checkpoint_dir}",
        f"  Hard-example intervals logged: {summary.hard_example_intervals}"
        + (f" (pictures and JSON in {run_dir / 'hard_examples'})" if summary.hard_example_intervals else ""),
        f"  Metrics: {run_dir / 'metrics.jsonl'}; loss curve: {run_dir / 'loss_curve.png'}",
        f"  wandb: {wandb_line}",
    ]
