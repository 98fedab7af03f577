"""Checkpoints: orbax `CheckpointManager` over a local directory or a `gs://` bucket.

A checkpoint at step N holds everything an exact resume needs: the train state (params,
optimizer moments, the rng, the step counter) and JSON metadata (every host's input
pipeline state, the settings a resume must match, each array's checksums, and each
host's hard-example tracker state).

Restoring walks from the newest step down and skips steps that fail to restore (a
truncated or corrupted save), saying so; orbax itself only lists steps whose save
finished (it writes to a temporary name and finalizes at the end).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from harness.errors import CheckpointSaveError, NonFiniteStateError, UsageError
from harness.runtime.collectives import all_hosts_true
from harness.runtime.failed_saves import FailedSaveListener
from harness.runtime.integrity import CHECKSUM_FORMAT, inspect_state, mismatched_leaves, saved_checksums

logger = logging.getLogger("harness.runtime.checkpoint")

STATE_ITEM, META_ITEM = "state", "meta"
COMMIT_MARKER = "commit_success.txt"
SAVE_POLL_S = 0.05

# Settings that must match between a checkpoint and the run resuming from it: anything
# that changes the state's shapes or which batch a step reads.
RESUME_MUST_MATCH = (
    "batch_size", "seed", "model", "model_size", "param_dtype", "hidden_dim", "num_layers", "vocab_size",
    "seq_len", "num_cameras", "action_horizon", "image_size", "hard_fraction",
)


class CheckpointStore:
    """Saves and restores train state + metadata; every host makes the same calls."""

    def __init__(self, directory: str, *, keep: int, async_save: bool, timeout_s: int = 600):
        self.directory = directory
        self._manager = ocp.CheckpointManager(
            epath.Path(directory),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                # Bounds the wait for a save that failed on another host (orbax: 1200 s).
                async_options=ocp.AsyncOptions(timeout_secs=timeout_s),
                create=True,
            ),
            item_names=(STATE_ITEM, META_ITEM),
        )
        self.saved_steps: list[int] = []
        self.damaged_steps: list[int] = []
        self._closed = False
        self._failed_saves = FailedSaveListener().attach()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts a save (async by default: returns once the arrays are copied off the
        devices; the next save waits for this one). The metadata gets each array's
        checksum and the state's shapes; a state with a non-finite value is refused
        (NonFiniteStateError), so it can neither be saved nor make orbax prune a good
        checkpoint. A collective: every host calls it at the same step."""
        checksums, bad = inspect_state(state)
        if bad:
            raise NonFiniteStateError(f"not saving step {step}: non-finite values in {', '.join(bad[:3])}")
        meta = {**meta, "checksums": checksums, "checksum_format": CHECKSUM_FORMAT,
                "state_signature": state_signature(state)}
        self.wait()  # orbax would wait for the previous save too, but not notice it failed here
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}
            ),
            force=True,
        )
        self.saved_steps.append(step)

    def restore_latest(
        self,
        abstract_state: Any,
        check_meta: Callable[[int, dict], None],
        on_skip: Callable[[int, str], None] | None = None,
    ) -> tuple[Any, dict] | None:
        """The newest checkpoint that restores cleanly on every host, or None.

        For each step, newest first: the commit marker and both items must be there; the
        metadata is read and handed to `check_meta(step, meta)`, which raises UsageError
        when the run's settings differ (a usage error, never damage: nothing is skipped
        or renamed); then the state is restored and its checksums compared with the
        saved ones. Only real damage (missing parts, unreadable data, a checksum
        mismatch) skips a step; it is reported through `on_skip` and remembered in
        `damaged_steps`. Every host reaches the same verdict on every step.
        `abstract_state` carries the target shardings, so a checkpoint written on another
        mesh or process count is resharded on the way in.
        """
        self.damaged_steps = []
        _quiet_reads_of_failed_restores()  # before any attempt: late callbacks can be quick
        signature = state_signature(abstract_state)
        for step in reversed(self.steps()):
            meta, problem = self._read_meta(step)
            if all_hosts_agree(problem is None):
                check_meta(step, meta)
                saved_signature = meta.get("state_signature")
                if saved_signature is not None and saved_signature != signature:
                    raise UsageError(f"cannot resume from {self.directory} step {step}: the state's "
                                     f"shapes differ ({describe_signature_change(saved_signature, signature)})")
                state, problem = self._read_state(step, abstract_state, meta)
                if all_hosts_agree(problem is None):
                    return state, meta
            problem = problem or "failed to restore on another host"
            self.damaged_steps.append(step)
            if on_skip is not None:
                on_skip(step, problem)
        return None

    def _read_meta(self, step: int) -> tuple[dict, str | None]:
        problem = self._missing_parts(step)
        if problem:
            return {}, problem
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
        except Exception as err:  # orbax raises many types for unreadable files
            return {}, f"metadata unreadable: {_first_line(err)}"
        meta = restored[META_ITEM]
        if not isinstance(meta, dict) or not isinstance(meta.get("checksums", {}), dict):
            return {}, "metadata is not a harness checkpoint's"
        return meta, None

    def _read_state(self, step: int, abstract_state: Any, meta: dict) -> tuple[Any, str | None]:
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)})
            )
            state = restored[STATE_ITEM]
        except Exception as err:  # orbax/tensorstore raise many types for bad data
            return None, _first_line(err)
        saved = saved_checksums(meta, where=f"{self.directory} step {step}")
        if saved is None:  # written before checksums existed: nothing to verify
            return state, None
        differ = mismatched_leaves(saved, inspect_state(state)[0])
        if differ:
            shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
            return None, f"checksum mismatch in {shown}"
        return state, None

    def _missing_parts(self, step: int) -> str | None:
        path = epath.Path(self.directory) / str(step)
        for name in (COMMIT_MARKER, STATE_ITEM, META_ITEM):
            if not (path / name).exists():
                return f"incomplete: no {name}"
        return None

    def set_aside_damaged(self) -> list[str]:
        """Renames damaged steps to `damaged-<step>-<time>` (never deletes them), so new
        saves can reuse their step numbers. Primary host only; returns the new names."""
        moved = []
        if self.damaged_steps and jax.process_index() == 0:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            for step in self.damaged_steps:
                source = epath.Path(self.directory) / str(step)
                target = epath.Path(self.directory) / f"damaged-{step}-{stamp}"
                source.rename(target)
                moved.append(str(target))
        all_hosts_agree(True)  # a barrier: no host reloads before the renames are done
        self._manager.reload()
        self.damaged_steps = []
        return moved

    def wait(self) -> None:
        """Waits for the save in flight; raises CheckpointSaveError as soon as it fails
        here, rather than after the commit barrier it would leave the others in. Bounded:
        orbax's barriers time out after `--checkpoint_timeout`, and the watchdog names a
        host that dies meanwhile."""
        while self._manager.is_saving_in_progress():
            self.raise_failed_save()
            time.sleep(SAVE_POLL_S)
        self._manager.wait_until_finished()

    def raise_failed_save(self) -> None:
        """Raises CheckpointSaveError if a background save failed on this host. Called
        after every step: orbax would only say so at the next save, while the other
        hosts wait for this one in the save's commit barrier (failed_saves.py)."""
        failure = self._failed_saves.failure
        if failure is not None:
            first = (str(failure).strip().splitlines() or [type(failure).__name__])[0][:300]
            raise CheckpointSaveError(f"host {jax.process_index()}: a checkpoint save to {self.directory} "
                                      f"failed: {first}")

    def close(self) -> None:
        """Waits for the last save and releases orbax's threads; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._failed_saves.detach()
        self._manager.close()


def _quiet_reads_of_failed_restores() -> None:
    """If orbax gives up on a damaged checkpoint, tensorstore reads that were still in
    flight finish on the event loop orbax already closed; each then reports
    "RuntimeError: Event loop is closed" as unraisable, and its unread read tasks are
    logged by asyncio at exit: dozens of traceback lines that bury the one-line
    explanation. Drop exactly those; pass everything else on."""
    previous = sys.unraisablehook
    if getattr(previous, "_harness_quiet", False):
        return

    def hook(unraisable: "sys.UnraisableHookArgs") -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._harness_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_orphaned_restore_reads)


def _drop_orphaned_restore_reads(record: logging.LogRecord) -> bool:
    """The same after-effect through asyncio's logger: orbax's read tasks of a failed
    restore are garbage-collected with their errors unread."""
    message = record.getMessage()
    return not ("Task exception was never retrieved" in message and "async_deserialize" in message)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def all_hosts_agree(ok: bool) -> bool:
    """True only if `ok` on every host (one tiny allgather when there are several)."""
    return all_hosts_true(ok)


def state_signature(tree: Any) -> dict[str, str]:
    """`{leaf path: "float32[32,32]"}`: what a restore must find (works on abstract trees)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): f"{np.dtype(leaf.dtype).name}{list(leaf.shape)}" for path, leaf in flat}


def describe_signature_change(saved: dict, now: dict) -> str:
    """The first few leaves whose shape or dtype changed, for a one-line error."""
    changes = [f"{path}: checkpoint {saved.get(path, 'absent')} vs now {now.get(path, 'absent')}"
               for path in sorted(saved.keys() | now.keys()) if saved.get(path) != now.get(path)]
    return "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")


def check_resume_compatible(saved: dict, current: dict, *, where: str) -> None:
    """A resume with different shapes or data would not be a resume: refuse it."""
    diffs = [
        f"{name}: checkpoint {saved.get(name)!r} vs now {current[name]!r}"
        for name in RESUME_MUST_MATCH
        if saved.get(name) != current[name]
    ]
    if diffs:
        raise UsageError(f"cannot resume from {where}: settings differ ({'; '.join(diffs)})")


def existing_steps(directory: str) -> list[int]:
    """Committed step directories (with their commit marker), read without creating
    anything. On GCS a failed save leaves a step directory without the marker: that one
    does not count."""
    path = epath.Path(directory)
    try:
        children = list(path.iterdir()) if path.exists() else []
    except FileNotFoundError:
        # On GCS a directory is a prefix: it can vanish between the two calls, e.g. when
        # its only object was another host's write probe (cli.prepare_runtime).
        return []
    return sorted(
        int(child.name) for child in children
        if child.name.isdigit() and (child / COMMIT_MARKER).exists()
    )


def delete_all(directory: str) -> None:
    """For `--overwrite` only: removes every step directory under `directory`.

    Every host runs this at start-up, so a directory can vanish under one host because
    another removed it first; that is fine. (No host saves before all have arrived at
    the first save's barrier, so nothing new is deleted.)
    """
    path = epath.Path(directory)
    try:
        children = list(path.iterdir()) if path.exists() else []
    except FileNotFoundError:
        return
    for child in children:
        if child.name.isdigit() or ".orbax-checkpoint-tmp" in child.name:
            try:
                child.rmtree()
            except FileNotFoundError:
                pass
