"""Weights & Biases logging for the training loop; call it on every host.

Only the primary host (process 0) of an enabled sink talks to wandb; on other hosts,
and with `enabled=False` (`--no_wandb`), every method returns at once and wandb is
never imported. Logging must never stop training: the first wandb error is logged as
one warning on the "harness.wandb" logger, and the sink turns itself off.

Where the run goes:
- Mode: `WANDB_MODE` (online / offline / disabled) decides when it is set. With
  neither `WANDB_MODE` nor `WANDB_API_KEY` set the run is offline; upload it later with
  `wandb sync <run_dir>/wandb/offline-run-*` (a resumed offline run has one such folder
  per segment; `wandb sync` replays them in start order).
- Files: the run lands in `<run_dir>/wandb/`. Unless the user set them,
  `WANDB_DATA_DIR` (staged table and image files, which an offline run needs until it
  is synced) and `WANDB_CACHE_DIR` point under `<run_dir>/wandb/`, so nothing lands in
  the home directory. `WANDB_CONFIG_DIR` is left alone: wandb only reads it (the
  user's `wandb login --host` settings).
- Resume: the run id is kept in `<run_dir>/wandb_run_id.txt`; `resume=True` with that
  file present continues the same wandb run.
- Timeouts: `wandb.init` gives up after 60 s and `finish` after 300 s, unless
  `WANDB_INIT_TIMEOUT` / `WANDB_FINISH_TIMEOUT` say otherwise.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.hard_examples.entry import HardExample
from harness.hard_examples.merge import GlobalStats
from harness.outputs.pictures import render_contact_sheet

logger = logging.getLogger("harness.wandb")

RUN_ID_FILE = "wandb_run_id.txt"
TABLE_COLUMNS = ("image", "loss", "step", "host", "sample_id", "lang_action", "prompt")
_TIMEOUTS_S = {"init_timeout": 60.0, "finish_timeout": 300.0}
_STAGING_DIRS = {"WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache"}


def _new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _describe(error: Exception) -> str:
    """The error on one line (wandb's messages span several)."""
    return " ".join(f"{type(error).__name__}: {error}".split())


class WandbSink:
    """Metrics, hard examples and the run summary to wandb, from the primary host only."""

    def __init__(
        self,
        *,
        enabled: bool,
        project: str,
        run_name: str | None,
        run_dir: Path,
        config: dict,
        is_primary: bool,
        resume: bool,
    ):
        self._run: Any = None
        self._broken = False  # after the first error: log nothing more, finish at the end
        self._run_id: str | None = None
        self._url: str | None = None
        self._run_path: Path | None = None
        self._offline = False
        self._min_step = 0  # wandb drops steps below the last one logged; skip them quietly
        self._warned_old_step = False
        if enabled and is_primary:
            self._guarded("init", self._start, project, run_name, Path(run_dir), config, resume)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def url(self) -> str | None:
        """The run's page; None offline."""
        return self._url

    @property
    def run_path(self) -> Path | None:
        """The local run folder, `<run_dir>/wandb/offline-run-*` when offline."""
        return self._run_path

    def _start(self, project: str, run_name: str | None, run_dir: Path, config: dict, resume: bool) -> None:
        import wandb  # here, so that a disabled sink never imports it

        # Fail loudly here rather than let wandb fall back to a temporary directory.
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / RUN_ID_FILE
        resuming = resume and id_file.exists()
        run_id = id_file.read_text().strip() if resuming else _new_run_id()
        for variable, folder in _STAGING_DIRS.items():
            os.environ.setdefault(variable, str(run_dir / "wandb" / folder))
        settings = {k: v for k, v in _TIMEOUTS_S.items() if f"WANDB_{k.upper()}" not in os.environ}
        if "WANDB_SILENT" not in os.environ and "WANDB_QUIET" not in os.environ:
            settings["silent"] = True  # the harness prints where the run is in its summary
        use_environment = "WANDB_MODE" in os.environ or "WANDB_API_KEY" in os.environ
        run = wandb.init(
            project=project,
            name=run_name,
            dir=run_dir,
            config=config,
            id=run_id,
            resume="allow" if resuming else None,
            mode=None if use_environment else "offline",
            settings=wandb.Settings(**settings),
        )
        if run.disabled:
            run.finish()
            logger.info("wandb mode is 'disabled': not logging to wandb")
            return
        self._run = run
        id_file.write_text(run_id + "\n")
        self._run_id = run.id
        self._offline = run.offline
        self._url = None if run.offline else run.url  # offline, wandb warns on .url
        self._run_path = Path(run.dir).parent
        self._min_step = run.step
        where = self._url or f"{self._run_path} (offline)"
        logger.info("wandb run %s%s: %s", run.id, " resumed" if resuming else "", where)

    def _guarded(self, what: str, action: Callable[..., None], *args: Any) -> None:
        """Run `action`; on any error warn once and turn the sink off.

        The run stays open until `finish`, so what was logged before the error is kept,
        and an unreachable server can't hold training here for the finish timeout.
        """
        try:
            action(*args)
        except Exception as error:  # logging must never stop training
            logger.warning("wandb %s failed (%s); wandb logging is off for the rest of this run",
                           what, _describe(error))
            self._broken = True

    def _log(self, step: int, data: Mapping[str, Any]) -> None:
        self._run.log(dict(data), step=step)
        self._min_step = step

    def _accepts(self, step: int) -> bool:
        """Whether `step` can still be logged; a resumed run re-logging old steps is not an error."""
        if self._run is None or self._broken:
            return False
        if step < self._min_step:
            if not self._warned_old_step:
                logger.info("wandb already has step %d; skipping re-logged steps below it", self._min_step)
                self._warned_old_step = True
            return False
        return True

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._accepts(step):
            self._guarded("log", lambda: self._log(step, {k: float(v) for k, v in metrics.items()}))

    def log_hard_examples(self, step: int, entries: Sequence[HardExample], stats: GlobalStats,
                          sheet: Image.Image | None = None) -> None:
        """A table of the entries, their contact sheet (`sheet` if already rendered), and
        the tracker's scalars."""
        if self._accepts(step):
            self._guarded("log of hard examples", self._log_hard_examples, step, entries, stats, sheet)

    def _log_hard_examples(self, step: int, entries: Sequence[HardExample], stats: GlobalStats,
                           sheet: Image.Image | None) -> None:
        import wandb

        table = wandb.Table(columns=list(TABLE_COLUMNS))
        for entry in entries:
            table.add_data(wandb.Image(np.asarray(entry.image)), float(entry.loss), int(entry.step),
                           int(entry.host), int(entry.sample_id), entry.lang_action, entry.prompt)
        if sheet is None:
            sheet = render_contact_sheet(entries, step=step, threshold=stats.threshold)
        data = {
            "hard_examples/table": table,
            "hard_examples/contact_sheet": wandb.Image(sheet, caption=f"step {step}"),
            "hard_examples/num_entries": len(entries),
            "hard_examples/total_samples": int(stats.num_samples),
            "hard_examples/num_high_loss": int(stats.num_high_loss),
            "hard_examples/num_hosts": int(stats.num_hosts),
        }
        for name in ("threshold", "loss_mean", "loss_max"):
            value = getattr(stats, name)
            if value is not None:
                data[f"hard_examples/{name}"] = float(value)
        self._log(step, data)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        if self._run is not None and not self._broken:
            self._guarded("summary update", self._run.summary.update, dict(summary))

    def finish(self) -> None:
        """Close the run (idempotent); offline, say how to upload it."""
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish()
            import wandb

            wandb.teardown()  # stops wandb's service process now rather than at exit
        except Exception as error:  # logging must never stop training
            if not self._broken:
                logger.warning("wandb finish failed (%s)", _describe(error))
            return
        if self._offline:
            logger.info("wandb offline run saved; upload it with: wandb sync %s", self._run_path)
