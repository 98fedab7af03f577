"""Where metrics go: the console and `<run_dir>/metrics.jsonl`.

Every host calls every sink; the host-0 check lives inside (big_vision's metric writer
style), so the training loop never branches on the process index.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Mapping, TextIO

from harness.runtime.collectives import gather_global

SCALAR_METRICS = ("loss", "grad_norm", "param_norm", "token_acc", "max_per_sample_loss")


def format_metrics_line(step: int, metrics: Mapping[str, float], *, steps_per_s: float | None = None) -> str:
    """`Step    0: loss=2.1234, grad_norm=...` in the seed's style, plus the step rate
    since the previous line when known (not on the first line: it includes compiling)."""
    fields = ", ".join(f"{name}={metrics[name]:.4f}" for name in SCALAR_METRICS)
    rate = f" [{steps_per_s:.1f} steps/s]" if steps_per_s is not None else ""
    return f"Step {step:4d}: {fields}{rate}"


class Console:
    """Prints on process 0 only; above the progress bar when one is live."""

    def __init__(self, is_primary: bool, stream: TextIO | None = None):
        self.is_primary = is_primary
        self._stream = stream
        self._progress = None

    @classmethod
    def for_this_process(cls) -> Console:
        """Process 0 speaks for the pod: the outputs' one host-0 decision, which the run's
        writer (run_outputs.py) and every sink take from here."""
        import jax

        return cls(jax.process_index() == 0)

    def attach(self, progress) -> None:
        self._progress = progress

    def print(self, text: str = "") -> None:
        if not self.is_primary:
            return
        if self._progress is not None and self._progress.live:
            self._progress.write(text)
        else:
            print(text, file=self._stream or sys.stdout, flush=True)


class MetricsFile:
    """One JSON object per logged step, full float precision, written on process 0.

    On resume from step N the file keeps only rows with step < N (and drops a torn
    last line from a killed run), so steps are never duplicated.
    """

    def __init__(self, path: Path, *, is_primary: bool, start_step: int):
        self.path = path
        self.is_primary = is_primary
        if not is_primary:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = _rows_before(path, start_step) if start_step > 0 else []
        with path.open("w") as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.is_primary:
            return
        row = {"step": step, **{k: _json_float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _json_float(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _rows_before(path: Path, step: int) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from a killed run
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < step:
            rows.append(row)
    return rows


class PerSampleLossFile:
    """Debug/test record: every step's (sample_id, loss) for the whole global batch.

    Gathered straight from the global arrays (`collectives.gather_global`), a path that does
    not use the host-local pairing the hard-example tracker relies on, so tests can check
    that pairing against it. Every host must call `write` (it is a collective).
    """

    def __init__(self, path: Path, *, is_primary: bool, start_step: int):
        self.path = path
        self.is_primary = is_primary
        if is_primary:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = _rows_before(path, start_step) if start_step > 0 else []
            path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def write(self, step: int, sample_id, per_sample_loss) -> None:
        ids, losses = gather_global(sample_id), gather_global(per_sample_loss)
        if self.is_primary:
            row = {"step": step, "sample_id": ids.tolist(), "loss": [float(x) for x in losses]}
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (used by tests, benchmarks and the loss curve)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
