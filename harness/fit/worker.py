"""Compiling training steps for TPU targets in one process, through the disk cache; and
`python -m harness.fit.worker`, a process that does it for harness/fit/pool.py.

The worker reads one JSON request per line on stdin (`{"id", "settings", "census"}`,
settings by flat name) and answers one JSON line each (`{"id", "outcome"}`, or
`{"id", "error", "usage"}`). Its stdout carries only those lines: what libraries print
goes to its stderr. It ends when stdin closes.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any, TextIO

from harness.config import TrainConfig
from harness.config.fields import apply_overrides, flat_values
from harness.errors import UsageError, error_line
from harness.fit.cache import OutcomeCache, cache_key
from harness.fit.compile import CompileOutcome, compile_lowered, lower_train_step
from harness.fit.topology import Target, resolve


class StepCompiler:
    """Meshes built once per target and FSDP size; every compile asks the cache first."""

    def __init__(self, cache: OutcomeCache):
        self.cache = cache
        self._meshes: dict[tuple, Any] = {}

    def target_and_mesh(self, config: TrainConfig) -> tuple[Target, Any]:
        from harness.fit.libtpu import topology_devices
        from harness.runtime.mesh import make_mesh

        target = resolve(config.tpu.topology, config.tpu.chip_config, config.mesh.num_slices)
        key = (target, config.mesh.fsdp_devices)
        if key not in self._meshes:
            self._meshes[key] = make_mesh(config.mesh.fsdp_devices, topology_devices(target))
        return target, self._meshes[key]

    def compile(self, config: TrainConfig, *, census: bool = False) -> CompileOutcome:
        target, mesh = self.target_and_mesh(config)
        lowered = lower_train_step(config, mesh)
        key = cache_key(lowered.as_text(), target)
        outcome = self.cache.get(key, census=census)
        if outcome is None:
            outcome = compile_lowered(lowered, config.data.batch_size, census=census)
            self.cache.put(key, outcome)
        return outcome


def request_line(job: int, config: TrainConfig, census: bool) -> str:
    return json.dumps({"id": job, "settings": flat_values(config), "census": census}) + "\n"


def _answer(compiler: StepCompiler, request: dict[str, Any]) -> dict[str, Any]:
    try:
        config = apply_overrides(TrainConfig(), request["settings"], source="compile request")
        outcome = compiler.compile(config, census=bool(request.get("census")))
    except UsageError as err:
        return {"id": request["id"], "error": str(err), "usage": True}
    except Exception as err:  # a compiler error other than out of memory: the caller says which compile
        return {"id": request["id"], "error": error_line(err, 2000), "usage": False}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"id": request["id"], "outcome": outcome.to_dict(), "peak_rss_mb": peak_rss_mb}


def serve(requests: TextIO, replies: TextIO, cache_dir: str) -> None:
    import jax

    jax.config.update("jax_platforms", "cpu")  # compile-only TPU devices; never claim an accelerator
    compiler = StepCompiler(OutcomeCache(cache_dir))
    for line in requests:
        if line.strip():
            replies.write(json.dumps(_answer(compiler, json.loads(line))) + "\n")
            replies.flush()


def main() -> None:
    """Replies on a private copy of stdout; fd 1 then points at stderr, so nothing a
    library prints can corrupt a reply."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies, sys.argv[1] if len(sys.argv) > 1 else "")
    replies.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
