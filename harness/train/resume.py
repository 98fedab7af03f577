"""What a run's checkpoint holds besides the state, and where a run starts.

A checkpoint's metadata holds the settings a resume must match (RESUME_MUST_MATCH, by
config path), every host's input-pipeline position and each host's hard-example tracker
state (harness/runtime/checkpoint.py adds the checksums and the state's shapes). A run
starts from a fresh state, or with `--resume` from the newest checkpoint that restores
cleanly on every host, putting the pipeline and the tracker back where they stood.
"""

from __future__ import annotations

from typing import Any

import jax

from harness.config import TrainConfig
from harness.config.fields import field_named
from harness.errors import UsageError
from harness.runtime.agree import gather_json
from harness.train.parts import RunParts
from harness.train.pipeline import PipelineStateError
from harness.train.step import TrainState, abstract_state, init_state

DATA_ITEM = "data"  # in the checkpoint metadata: every host's input pipeline state
# The settings a checkpoint's state and data position depend on, by config path: anything
# that changes the state's shapes or which batch a step reads.
RESUME_MUST_MATCH = (
    "data.batch_size", "run.seed", "model.name", "model.size", "model.param_dtype", "model.hidden_dim",
    "model.num_layers", "data.vocab_size", "data.seq_len", "data.num_cameras", "data.action_horizon",
    "data.image_size", "data.hard_fraction",
)


def save_checkpoint(parts: RunParts, step: int, state: TrainState, data_state: dict) -> None:
    """Saves `state` at `step` with its metadata. A collective: every host calls it at
    the same step, with the steps before it finished (the tracker state is gathered)."""
    meta: dict[str, Any] = {"step": step, "resume": resume_fingerprint(parts.config),
                            DATA_ITEM: gather_json(data_state)}
    if parts.reporter is not None:
        meta["hard_examples"] = parts.reporter.checkpoint_state(step)
    parts.store.save(step, state, meta)


def resume_fingerprint(config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint records of the settings in RESUME_MUST_MATCH, by path."""
    return {path: config.setting(path) for path in RESUME_MUST_MATCH}


def check_resume_compatible(saved: dict, current: dict, *, where: str) -> None:
    """A resume with different shapes or data would not be a resume: refuse it, naming
    each setting as it is typed (`hidden_dim`). Checkpoints written before the record
    was keyed by path have flat names as keys."""
    diffs = []
    for path in RESUME_MUST_MATCH:
        flat = field_named(path).flat
        was = saved.get(path, saved.get(flat))
        if was != current[path]:
            diffs.append(f"{flat}: checkpoint {was!r} vs now {current[path]!r}")
    if diffs:
        raise UsageError(f"cannot resume from {where}: settings differ ({'; '.join(diffs)})")


def initial_state(parts: RunParts) -> tuple[TrainState, int]:
    """The state and step the run starts from: fresh, or (`--resume`) restored with the
    input pipeline and the tracker where they stood. Damaged checkpoints are set aside
    and said; with none valid and some damaged, UsageError unless --allow_fresh_start."""
    config, console, store = parts.config, parts.console, parts.store
    if not config.checkpoint.resume:
        return init_state(config, parts.mesh), 0

    def check_settings(step: int, meta: dict) -> None:
        saved = meta.get("resume")
        check_resume_compatible(saved if isinstance(saved, dict) else {}, resume_fingerprint(config),
                                where=f"{config.checkpoint.dir} step {step}")

    def report_skipped(step: int, problem: str) -> None:
        console.print(f"WARNING: checkpoint step {step} is damaged ({problem}); trying an older one")

    restored = store.restore_latest(abstract_state(config, parts.mesh), check_settings, on_skip=report_skipped)
    damaged = list(store.skipped_steps)
    if restored is None and damaged and not config.checkpoint.allow_fresh_start:
        raise UsageError(
            f"no valid checkpoint in {config.checkpoint.dir} (damaged: steps "
            f"{', '.join(map(str, damaged))}); nothing was changed. Pass --allow_fresh_start "
            f"to start from step 0 (damaged steps are kept as they are, marked with a DAMAGED file)"
        )
    for marker in store.mark_damaged():
        console.print(f"WARNING: damaged checkpoint set aside (kept, never restored or saved over): {marker}")
    if restored is None:
        console.print("No valid checkpoint to resume from: starting at step 0")
        state, step = init_state(config, parts.mesh), 0
    else:
        state, meta = restored
        step = int(jax.device_get(state.step))
        _restore_pipeline(parts, meta, step)
        if parts.reporter is not None:
            problem = parts.reporter.restore_state(meta.get("hard_examples"), step=step,
                                                   read_records=parts.dataset.records)
            if problem:
                console.print(f"WARNING: {problem}")
        console.print(f"Resumed from checkpoint at step {step}"
                      + (f" (newer damaged steps skipped: {', '.join(map(str, damaged))})" if damaged else ""))
    # A damaged checkpoint keeps its step number: this run cannot save there.
    held = [s for s in sorted(store.marked_steps) if step < s <= config.run.num_train_steps]
    if held:
        console.print(f"WARNING: no checkpoint will be saved at step {', '.join(map(str, held))}: damaged "
                      f"checkpoints hold those steps in {config.checkpoint.dir} (delete them to free the steps)")
    return state, step


def _restore_pipeline(parts: RunParts, meta: dict, step: int) -> None:
    """Puts the input pipeline where it stood at the save: this host's own saved state,
    or, on another process count, the state all hosts shared."""
    saved = meta.get(DATA_ITEM)
    where = f"{parts.config.checkpoint.dir} step {step}"
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
        parts.pipeline.restore(state)
    except PipelineStateError as err:
        raise UsageError(f"cannot resume from {where}: {err}") from None
