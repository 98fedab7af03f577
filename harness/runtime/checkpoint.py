"""Checkpoints: orbax `CheckpointManager` over a local directory or a `gs://` bucket.

A checkpoint at step N holds everything an exact resume needs: the train state (params,
optimizer moments, the rng, the step counter) and JSON metadata: what the run records
(harness/train/resume.py: every host's input pipeline state, the settings a resume must
match, each host's hard-example tracker state), with each array's checksums and the
state's shapes added here.

Restoring walks from the newest step down and skips steps with proven damage (a missing
part, corrupt bytes, a checksum mismatch), saying so; any other failure to read stops
the resume on every host with exit 42 and changes nothing (harness/runtime/damage.py).
orbax itself only lists steps whose save finished (it writes to a temporary name, or
on GCS writes the commit marker last).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from harness.errors import CheckpointSaveError, CheckpointUnreadableError, NonFiniteStateError, UsageError, first_line
from harness.runtime.agree import agreed_problem, gather_json
from harness.runtime.collectives import all_hosts_true, join_barrier
from harness.runtime.damage import (
    MARKER, KeepMarkedAndNewest, describe, is_proven_damage, read_marker, write_marker,
)
from harness.runtime.failed_saves import FailedSaveListener
from harness.runtime.integrity import CHECKSUM_FORMAT, inspect_state, mismatched_leaves, saved_checksums
from harness.runtime.orbax_internals import restore_barrier_name
from harness.runtime.quiet import quiet_reads_of_failed_restores, quiet_storage_clients

STATE_ITEM, META_ITEM = "state", "meta"
COMMIT_MARKER = "commit_success.txt"
SAVE_POLL_S = 0.05
DAMAGED, UNREADABLE = "damaged", "unreadable"  # a host's verdict on reading a step
NOTHING_CHANGED = "not proven damage, so nothing was changed; exit 42 (restartable)"


class CheckpointStore:
    """Saves and restores train state + metadata; every host makes the same calls.

    Construction lists the directory and reads the steps' DAMAGED markers before orbax
    lists it, agreed by every host: a listing that fails on any host raises
    CheckpointUnreadableError on every host, not inside orbax's barriers."""

    def __init__(self, directory: str, *, keep: int, async_save: bool, timeout_s: int = 600):
        self.directory = directory
        self._timeout_s = timeout_s
        self._listed_steps, self.marked_steps = _agreed_listing(directory)
        self._pruning = KeepMarkedAndNewest(keep, set(self.marked_steps))
        self._manager = ocp.CheckpointManager(
            epath.Path(directory),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=self._pruning,  # --keep, never counting or deleting a marked step
                enable_async_checkpointing=async_save,
                # Bounds the wait for a save that failed on another host (orbax: 1200 s).
                async_options=ocp.AsyncOptions(timeout_secs=timeout_s),
                create=True,
            ),
            item_names=(STATE_ITEM, META_ITEM),
        )
        self._restore_barrier = restore_barrier_name(self._manager)
        self.saved_steps: list[int] = []
        self.damaged_steps: dict[int, str] = {}  # found by restore_latest, not marked yet
        self.skipped_steps: list[int] = []       # passed over by restore_latest, newest first
        self._closed = False
        self._failed_saves = FailedSaveListener(directory).attach()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts a save (async by default: returns once the arrays are copied off the
        devices; the next save waits for this one). The metadata gets each array's
        checksum and the state's shapes; a state with a non-finite value is refused
        (NonFiniteStateError), so it can neither be saved nor make orbax prune a good
        checkpoint. A collective: every host calls it at the same step. A step held by a
        damaged checkpoint (`marked_steps`) is not saved: it is never overwritten."""
        if step in self.marked_steps:
            return
        signature = state_signature(state)
        checksums, bad = inspect_state(state)
        if bad:
            raise NonFiniteStateError(f"not saving step {step}: non-finite values in {', '.join(bad[:3])}")
        meta = {**meta, "checksums": checksums, "checksum_format": CHECKSUM_FORMAT, "state_signature": signature}
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

        For each step, newest first: a step marked damaged by an earlier run is passed
        over unread; otherwise both items must be there, the metadata is read and handed
        to `check_meta(step, meta)`, which raises UsageError when the run's settings
        differ (never damage: nothing is skipped or marked); then the state is restored
        and its checksums compared with the saved ones. Only proven damage (damage.py)
        skips a step: it is reported through `on_skip` and kept in `damaged_steps` for
        `mark_damaged`. Any other failure raises CheckpointUnreadableError on every host.
        Every host reaches the same verdict on every step. `abstract_state` carries the
        target shardings, so a checkpoint written on another mesh or process count is
        resharded on the way in.
        """
        self.damaged_steps, self.skipped_steps = {}, []
        quiet_reads_of_failed_restores()  # before any attempt: late callbacks can be quick
        signature = state_signature(abstract_state)
        with quiet_storage_clients():  # a failed read is told in one line, here or by the caller
            return self._restore_newest(abstract_state, signature, check_meta, on_skip)

    def _restore_newest(self, abstract_state: Any, signature: dict[str, str],
                        check_meta: Callable[[int, dict], None],
                        on_skip: Callable[[int, str], None] | None) -> tuple[Any, dict] | None:
        for step in reversed(self._listed_steps):
            if step in self.marked_steps:
                damage = f"marked by an earlier run: {self.marked_steps[step]}"
            else:
                meta, verdict = self._read_meta(step)
                damage = self._agreed_damage(step, verdict)
                if damage is None:
                    check_meta(step, meta)
                    saved_signature = meta.get("state_signature")
                    if saved_signature is not None and saved_signature != signature:
                        raise UsageError(f"cannot resume from {self.directory} step {step}: the state's shapes "
                                         f"differ ({describe_signature_change(saved_signature, signature)})")
                    state, damage = self._read_state(step, abstract_state, meta)
                    if damage is None:
                        return state, meta
                self.damaged_steps[step] = damage
            self.skipped_steps.append(step)
            if on_skip is not None:
                on_skip(step, damage)
        return None

    def _read_meta(self, step: int) -> tuple[dict, tuple[str, str] | None]:
        """This host's metadata of `step`, or its verdict (DAMAGED or UNREADABLE, why)."""
        path = epath.Path(self.directory) / str(step)
        for name in (COMMIT_MARKER, STATE_ITEM, META_ITEM):
            try:
                present = (path / name).exists()
            except Exception as err:  # storage clients raise many types
                join_barrier(self._restore_barrier)
                return {}, (UNREADABLE, f"checking for {name}: {describe(err)}")
            if not present:
                join_barrier(self._restore_barrier)  # the hosts that found every part restore
                return {}, (DAMAGED, f"incomplete: no {name}")
        try:
            meta = self._restore(step, META_ITEM, ocp.args.JsonRestore())
        except Exception as err:  # orbax raises many types; damage.py sorts them
            return {}, _verdict(err, "metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("checksums", {}), dict):
            return {}, (DAMAGED, "metadata is not a harness checkpoint's")
        return meta, None

    def _read_state(self, step: int, abstract_state: Any, meta: dict) -> tuple[Any, str | None]:
        """The restored state, or the damage every host agreed on. The checksums are one
        program over the global state, so they run only once every host has read it."""
        state, verdict = None, None
        try:
            state = self._restore(step, STATE_ITEM, ocp.args.StandardRestore(abstract_state))
        except Exception as err:  # orbax/tensorstore raise many types; damage.py sorts them
            verdict = _verdict(err, "arrays")
        damage = self._agreed_damage(step, verdict)
        if damage is not None:
            return None, damage
        saved = saved_checksums(meta, where=f"{self.directory} step {step}")
        if saved is None:  # written before checksums existed: nothing to verify
            return state, None
        differ = mismatched_leaves(saved, inspect_state(state)[0])
        if differ:
            shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
            return None, f"checksum mismatch in {shown}"
        return state, None

    def _restore(self, step: int, item: str, args: Any) -> Any:
        """One item of `step` through orbax. A collective: orbax closes a restore with a
        barrier every host must reach, so a host whose attempt raised joins it here. Every
        read attempt is one such barrier on every host, whatever happened on it, and the
        hosts can then agree on what happened."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
        except Exception:
            join_barrier(self._restore_barrier)
            raise

    def _agreed_damage(self, step: int, verdict: tuple[str, str] | None) -> str | None:
        """Every host's verdict on `step` made one: if any host could not read it, every
        host raises CheckpointUnreadableError (nothing is proven, nothing is changed);
        otherwise the damage any host proved, or None. Two collectives; every host calls it."""
        kind, detail = verdict or (None, None)
        unreadable = agreed_problem(detail if kind == UNREADABLE else None)
        if unreadable is not None:
            raise CheckpointUnreadableError(f"cannot read checkpoint step {step} in {self.directory} "
                                            f"({unreadable}); {NOTHING_CHANGED}")
        return agreed_problem(detail if kind == DAMAGED else None)

    def mark_damaged(self) -> list[str]:
        """Sets aside the steps `restore_latest` found damaged: host 0 writes a DAMAGED
        marker in each (damage.py); nothing is moved or deleted, and from then on they are
        never restored, pruned or saved over. Every host calls it; returns the markers."""
        if not self.damaged_steps:
            return []
        problem = None
        if jax.process_index() == 0:
            try:
                for step, reason in self.damaged_steps.items():
                    write_marker(epath.Path(self.directory) / str(step), reason)
            except Exception as err:  # storage clients raise many types
                problem = f"writing a {MARKER} marker: {describe(err)}"
        problem = agreed_problem(problem)  # also keeps the others until the markers are written
        if problem is not None:
            raise CheckpointUnreadableError(f"cannot set aside the damaged checkpoints in {self.directory} "
                                            f"({problem}); exit 42 (restartable)")
        markers = [str(epath.Path(self.directory) / str(step) / MARKER) for step in self.damaged_steps]
        self.marked_steps.update(self.damaged_steps)
        self._pruning.marked.update(self.damaged_steps)
        self.damaged_steps = {}
        return markers

    def wait(self) -> None:
        """Waits for the save in flight; raises CheckpointSaveError as soon as it fails
        here, rather than after the commit barrier it would leave the others in. Bounded:
        orbax's barriers time out after `--checkpoint_timeout`, the watchdog names a host
        that dies meanwhile, and a save still in flight after twice that (storage that
        stopped answering) fails here."""
        deadline = time.monotonic() + 2 * self._timeout_s
        while self._manager.is_saving_in_progress():
            self.raise_failed_save()
            if time.monotonic() > deadline:
                raise CheckpointSaveError(f"a checkpoint save to {self.directory} was still in flight after "
                                          f"{2 * self._timeout_s} s (twice --checkpoint_timeout)")
            time.sleep(SAVE_POLL_S)
        self._manager.wait_until_finished()

    def raise_failed_save(self) -> None:
        """Raises CheckpointSaveError if a background save failed on this host. Called
        after every step: orbax would only say so at the next save, while the other
        hosts wait for this one in the save's commit barrier (failed_saves.py)."""
        failure = self._failed_saves.failure
        if failure is not None:
            first = first_line(failure)
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


def _agreed_listing(directory: str) -> tuple[list[int], dict[int, str]]:
    """The committed steps in `directory` and the marked ones among them (step -> the
    marker's reason), the same on every host. Raises CheckpointUnreadableError on every
    host if any host could not list them, or if the hosts saw different ones. Two
    collectives; every host calls it."""
    steps: list[int] = []
    marked: dict[int, str] = {}
    problem = None
    try:
        steps, marked = _list_steps(epath.Path(directory))
    except Exception as err:  # storage clients raise many types; none of them is damage
        problem = describe(err)
    problem = agreed_problem(problem)
    if problem is not None:
        raise CheckpointUnreadableError(f"cannot list the checkpoints in {directory} ({problem}); {NOTHING_CHANGED}")
    views = gather_json([steps, sorted(marked)])
    if any(view != views[0] for view in views):
        seen = "; ".join(f"host {host}: steps {view[0]}, marked {view[1]}" for host, view in enumerate(views))
        raise CheckpointUnreadableError(f"the hosts list different checkpoints in {directory} ({seen}); "
                                        f"{NOTHING_CHANGED}")
    return steps, marked


def _list_steps(path: epath.Path) -> tuple[list[int], dict[int, str]]:
    """This host's view of `path`: the finished steps, by orbax's own rule (on GCS, the
    commit marker is there), and the reasons in the markers of those set aside. A failed
    read raises, told in one line by the caller."""
    with quiet_storage_clients():
        if not path.exists():
            return [], {}
        steps = sorted(found.step for found in ocp.step.standard_name_format().find_all(path))
        reasons = {step: read_marker(path / str(step)) for step in steps}
    return steps, {step: reason for step, reason in reasons.items() if reason is not None}


def _verdict(err: Exception, item: str) -> tuple[str, str]:
    """A failed read of `item` as a verdict: DAMAGED only when it proves damage."""
    if is_proven_damage(err):
        return DAMAGED, f"{item} unreadable: {describe(err)}"
    return UNREADABLE, f"reading its {item}: {describe(err)}"


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


def existing_steps(directory: str) -> list[int]:
    """Committed step directories (with their commit marker), read without creating
    anything. On GCS a failed save leaves a step directory without the marker: that one
    does not count."""
    path = epath.Path(directory)
    try:
        children = list(path.iterdir()) if path.exists() else []
        return sorted(
            int(child.name) for child in children
            if child.name.isdigit() and (child / COMMIT_MARKER).exists()
        )
    except FileNotFoundError:
        # On GCS a directory is a prefix: it can vanish between the two calls, e.g. when
        # its only object was another host's write probe (startup.check_startup).
        return []
    except Exception as err:  # storage clients raise many types; none of them is damage
        raise CheckpointUnreadableError(f"cannot list the checkpoints in {directory} ({describe(err)}); "
                                        f"{NOTHING_CHANGED}") from None


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
