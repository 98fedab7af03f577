"""Compile the training step ahead of time, as training would run it, and read what the
compiler says about memory.

The step is `harness.train.step.make_train_step(config, mesh)`, the very function the
loop calls, lowered with abstract inputs: the state as a checkpoint restores it
(`abstract_state`) and a batch of ShapeDtypeStructs shaped like the mock data's. On a
mesh of compile-only TPU devices this runs the real TPU compiler; running out of HBM is
an outcome (`fits=False` with the compiler's numbers), not an exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from typing import Any

import jax
from jax.sharding import Mesh

from harness.config import DataConfig, TrainConfig
from harness.fit.census import KindCount, collective_census
from harness.fit.libtpu import parse_bytes
from harness.mock.data import Batch, MockDataset
from harness.runtime.mesh import batch_sharding
from harness.train.step import TrainState, abstract_state, make_train_step

_REQUIRED = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")
_USED = re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm")
_METADATA = re.compile(r", metadata=\{[^}]*\}")
_DEBUG_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def abstract_batch(data: DataConfig, mesh: Mesh) -> Batch:
    """The global batch's shapes and dtypes (one real sample, scaled), batch-sharded.
    A sample's shapes do not depend on the seed, so any seed will do."""
    sample = MockDataset(dataclasses.replace(data, batch_size=1), seed=0).batch_at(0)
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((data.batch_size, *x.shape[1:]),
                                       jax.dtypes.canonicalize_dtype(x.dtype), sharding=sharding),
        sample)


def lower_train_step(config: TrainConfig, mesh: Mesh) -> jax.stages.Lowered:
    """The loop's jitted step, lowered for `mesh` without allocating anything."""
    return make_train_step(config, mesh).lower(abstract_state(config, mesh), abstract_batch(config.data, mesh))


def program_fingerprint(hlo_text: str) -> str:
    """sha256 of a compiled program's HLO without its debug info (source files, stack
    frames, op metadata), which name the caller rather than the program."""
    lines, in_table = [], False
    for line in hlo_text.splitlines():
        if line in _DEBUG_TABLES:
            in_table = True
        elif in_table and not line.strip():
            in_table = False
        elif not in_table:
            lines.append(_METADATA.sub("", line))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


@dataclasses.dataclass(frozen=True)
class ArgumentBytes:
    """Per-device bytes of the step's inputs, from their shapes and shardings."""

    params: int
    optimizer: int
    batch: int
    other: int  # step counter, rng key

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.batch + self.other


def argument_bytes(config: TrainConfig, mesh: Mesh) -> ArgumentBytes:
    state: TrainState = abstract_state(config, mesh)
    return ArgumentBytes(params=shard_bytes(state.params), optimizer=shard_bytes(state.opt_state),
                         batch=shard_bytes(abstract_batch(config.data, mesh)),
                         other=shard_bytes((state.step, state.rng)))


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
    """The compiler's refusal: its message and the figures in it."""

    message: str
    required_bytes: int | None
    available_bytes: int | None


@dataclasses.dataclass
class CompileOutcome:
    batch_size: int
    seconds: float
    memory: dict[str, int] | None = None        # memory_analysis(), per device
    cost: dict[str, float] | None = None        # cost_analysis(), per device
    oom: OutOfMemory | None = None
    fingerprint: str | None = None              # program_fingerprint of the compiled HLO
    census: dict[str, KindCount] | None = None  # collectives of the compiled HLO, when asked for
    cached: bool = False                        # answered from harness/fit/cache.py, no compile

    @property
    def fits(self) -> bool:
        return self.oom is None

    @property
    def device_peak(self) -> int | None:
        """The bytes to hold against HBM: the compiler's peak; None where it put
        temporaries in pinned host memory (remat offload). libtpu's peak then counts the
        host side (1B, offload, FSDP 8, batch 1776 on v5e-16: 37.13 GiB, the arguments'
        1.45 plus 35.68 of host temporaries), and the sizes summed bound nothing either
        (1B, offload, FSDP 4, batch 2096 on v6e-8: 38.88 GiB of temporaries on a 31.25
        GiB chip that took the program), so the verdict is the compiler's alone."""
        if self.memory is None or self.memory.get("host_temp_size"):
            return None
        return self.memory["peak_memory"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the disk cache and the compile workers' replies)."""
        out = dataclasses.asdict(self)
        out["census"] = None if self.census is None else {k: dataclasses.asdict(v) for k, v in self.census.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompileOutcome":
        census = data.get("census")
        return cls(batch_size=int(data["batch_size"]), seconds=float(data["seconds"]), memory=data.get("memory"),
                   cost=data.get("cost"), oom=OutOfMemory(**data["oom"]) if data.get("oom") else None,
                   fingerprint=data.get("fingerprint"),
                   census=None if census is None else {k: KindCount(**v) for k, v in census.items()},
                   cached=bool(data.get("cached", False)))


def _out_of_memory(err: Exception) -> OutOfMemory | None:
    text = str(err)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    message = next((line for line in lines if "RESOURCE_EXHAUSTED" in line), lines[0])
    required = available = None
    if match := _REQUIRED.search(text):
        required, available = parse_bytes(*match.groups()[:2]), parse_bytes(*match.groups()[2:])
    elif match := _USED.search(text):
        required, available = parse_bytes(*match.groups()[:2]), parse_bytes(*match.groups()[2:])
    return OutOfMemory(message=message[:500], required_bytes=required, available_bytes=available)


def _memory(compiled: jax.stages.Compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
             "temp_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes", "host_temp_size_in_bytes")
    return {name.removesuffix("_in_bytes"): int(getattr(stats, name)) for name in names}


def _cost(compiled: jax.stages.Compiled) -> dict[str, float]:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {key: float(analysis[key]) for key in ("flops", "bytes accessed") if key in (analysis or {})}


def compile_lowered(lowered: jax.stages.Lowered, batch_size: int, *, census: bool = False) -> CompileOutcome:
    """Compile a lowered step; an out-of-HBM refusal is returned, not raised. Any other
    compiler error propagates. `census`: count the compiled program's collectives."""
    started = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as err:
        oom = _out_of_memory(err)
        if oom is None:
            raise
        return CompileOutcome(batch_size, time.perf_counter() - started, oom=oom)
    seconds = time.perf_counter() - started
    hlo_text = compiled.as_text()
    return CompileOutcome(batch_size, seconds, memory=_memory(compiled), cost=_cost(compiled),
                          fingerprint=program_fingerprint(hlo_text),
                          census=collective_census(hlo_text) if census else None)


def compile_train_step(config: TrainConfig, mesh: Mesh, *, census: bool = False) -> CompileOutcome:
    """Lower and compile the training step (no cache; harness/fit/cache.py has one)."""
    return compile_lowered(lower_train_step(config, mesh), config.data.batch_size, census=census)
