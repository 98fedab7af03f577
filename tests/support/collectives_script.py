"""Every gather of harness/runtime/collectives.py, and the state checksums of
harness/runtime/integrity.py, across real processes, for tests/test_collectives.py to
compare host with host and with oracles. Run it under the launcher (a test helper, not a
tool):

    python -m launch.local --num_processes 2 --devices_per_process 4 --timeout 120 -- \\
        python -m tests.support.collectives_script

Each host prints one line, `RESULT {json}`, with what every call returned to it.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from harness.runtime import distributed
from harness.runtime.agree import agreed_problem, gather_json
from harness.runtime.collectives import FIRST_PAYLOAD_BYTES, allgather_bytes, allgather_ints, allgather_rows
from harness.runtime.integrity import inspect_state

PAYLOAD_LIMIT = 20_000
# Per host and call: payload lengths around the first round's edge, and one over the limit.
PAYLOAD_LENGTHS = [(0, 5), (FIRST_PAYLOAD_BYTES, FIRST_PAYLOAD_BYTES + 1), (3000, 17), (PAYLOAD_LIMIT + 1, 9)]


def payload(host: int, call: int, length: int) -> bytes:
    """Bytes any process can recompute: a pure function of host, call and length."""
    return np.random.default_rng([host, call]).integers(0, 256, length, dtype=np.uint8).tobytes()


def state_values() -> dict[str, np.ndarray]:
    """The state whose checksums every host computes (and the test recomputes)."""
    rng = np.random.default_rng(11)
    with_nan = rng.standard_normal((16, 8)).astype(jnp.bfloat16)
    with_nan[3, 5] = np.nan
    return {
        "w": rng.standard_normal((16, 24)).astype(np.float32),
        "half": rng.standard_normal((8, 4)).astype(np.float16),
        "bf16_nan": with_nan,
        "ids": np.arange(40, dtype=np.int32),
        "step": np.asarray(7, dtype=np.int32),
    }


SPECS = {"w": P("data", "fsdp"), "half": P("fsdp"), "bf16_nan": P(None, "fsdp"), "ids": P(("data", "fsdp")),
         "step": P()}


def main() -> None:
    distributed.initialize("auto")
    host = jax.process_index()
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    state = {
        name: jax.make_array_from_callback(values.shape, NamedSharding(mesh, SPECS[name]), lambda i, v=values: v[i])
        for name, values in state_values().items()
    }
    checksums, nonfinite = inspect_state(state)
    blobs = []
    for call, lengths in enumerate(PAYLOAD_LENGTHS):
        received, sent = allgather_bytes(payload(host, call, lengths[host]), max_payload_bytes=PAYLOAD_LIMIT)
        blobs.append({"received": [None if b is None else b.hex() for b in received], "sent": sent})
    result = {
        "host": host,
        "rows": allgather_rows(np.asarray([host * 1.5, -host], dtype=np.float32)).tolist(),
        "ints": allgather_ints([host, 2**40 + host]).tolist(),
        "bytes": blobs,
        "json": gather_json({"host": host, "position": [host, 3]}),
        "problem": agreed_problem("disk full" if host == 1 else None),
        "no_problem": agreed_problem(None),
        "checksums": checksums,
        "nonfinite": nonfinite,
    }
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
