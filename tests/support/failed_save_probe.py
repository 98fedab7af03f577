"""One process, three checkpoint stores, for tests/test_failed_saves.py:

1. a local store saves step 1; its data is torn; a second store on that directory
   restores (a restore error that orbax handles as damage);
2. a gs:// store whose array writes are refused (tensorstore sent to a server that
   answers 403) saves step 1 in the background and fails.

Prints one JSON line: when (seconds after the failed save was started) this store's
listener heard the failure (within WATCH_S), what `raise_failed_save()` raised, and what the local stores' listeners
heard. Run with the emulator's variables set (gcs_emulator_env), and
PROBE_DENY_URL pointing at the refusing server:

    python -m tests.support.failed_save_probe /tmp/local_dir gs://bucket/prefix
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

WATCH_S = 10.0
POLL_S = 0.01


def _tear(step_dir: Path) -> None:
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def main(local_dir: str, gcs_dir: str) -> dict:
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = os.environ["PROBE_DENY_URL"]
    import jax
    import jax.numpy as jnp

    from harness.errors import CheckpointSaveError
    from harness.runtime.checkpoint import CheckpointStore

    state = {"w": jnp.arange(64.0).reshape(8, 8), "step": jnp.asarray(1)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

    saver = CheckpointStore(local_dir, keep=2, async_save=False)
    saver.save(1, state, {})
    _tear(Path(local_dir) / "1")
    reader = CheckpointStore(local_dir, keep=2, async_save=False)
    restored = reader.restore_latest(abstract, lambda step, meta: None)

    failing = CheckpointStore(gcs_dir, keep=2, async_save=True, timeout_s=60)
    started = time.monotonic()
    failing.save(1, state, {})
    heard = None
    while time.monotonic() - started < WATCH_S and heard is None:
        if failing._failed_saves.failure is not None:
            heard = time.monotonic() - started
        time.sleep(POLL_S)
    try:
        failing.raise_failed_save()
        raised = None
    except CheckpointSaveError as err:
        raised = str(err)
    return {
        "restored_damaged": restored is not None,
        "damaged_steps": sorted(reader.damaged_steps),
        "local_listeners": [repr(saver._failed_saves.failure), repr(reader._failed_saves.failure)],
        "heard_s": heard,
        "raised": raised,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
    os._exit(0)  # orbax's failed background save would otherwise wait in its threads
