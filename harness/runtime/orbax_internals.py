"""Every use of orbax-checkpoint's private modules (`orbax.checkpoint._src`) and private
attributes, in one place, so that an orbax upgrade that moves them breaks here and in
tests/test_private_apis.py, which checks the pinned 0.12.8 still has each of them.

What is used, and why (orbax 0.12.8 offers no public hook for either):
- `tensorstore_utils._BASE_TS_CONTEXT` and `_DEFAULT_OCDBT_TS_CONTEXT`, the module-level
  dicts from which `get_ts_context` builds the tensorstore Context of every save and
  restore. A resource added to them (`add_tensorstore_context_resource`) reaches every
  read and write; harness/runtime/storage.py sets tensorstore's GCS retries this way.
- A CheckpointManager's `_checkpointer._barrier_sync_key_prefix` and
  `multihost.unique_barrier_key`: the name of the barrier that closes every restore
  (`restore_barrier_name`). A host whose restore raised joins it (checkpoint.py), so
  every host makes the same collective calls.

harness/runtime/failed_saves.py relies on the text of a log record orbax writes (not an
API of any kind); its own test shows it on a real failing save.
"""

from __future__ import annotations

from collections.abc import Mapping

_TS_CONTEXTS = ("_BASE_TS_CONTEXT", "_DEFAULT_OCDBT_TS_CONTEXT")


def add_tensorstore_context_resource(name: str, spec: Mapping[str, object]) -> None:
    """Makes every orbax save and restore build its tensorstore Context with resource
    `name` = `spec`. Raises if this orbax no longer has the dicts, rather than silently
    doing nothing."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    for context in _TS_CONTEXTS:
        base = getattr(tensorstore_utils, context, None)
        if not isinstance(base, dict):
            raise RuntimeError(
                f"orbax tensorstore_utils.{context} is gone; re-check how this orbax "
                "version builds its tensorstore Context (harness/runtime/orbax_internals.py)"
            )
        base[name] = dict(spec)


def restore_barrier_name(manager: object) -> str:
    """The name of the barrier that closes every restore of the orbax CheckpointManager
    `manager`: orbax 0.12.8's `Checkpointer.restore` ends with `sync_global_processes`,
    which hands this name to JAX's global device barrier. Raises if this orbax no longer
    builds it this way."""
    from orbax.checkpoint._src.multihost import multihost

    checkpointer = getattr(manager, "_checkpointer", None)
    if not hasattr(checkpointer, "_barrier_sync_key_prefix") or not hasattr(multihost, "unique_barrier_key"):
        raise RuntimeError("orbax's Checkpointer no longer names its restore barrier as 0.12.8 did; re-check "
                           "Checkpointer.restore before relying on a failed host joining it")
    return multihost.unique_barrier_key("Checkpointer:restore", prefix=checkpointer._barrier_sync_key_prefix)
