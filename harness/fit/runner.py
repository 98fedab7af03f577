"""One harness-fit run: resolve the target, build training's mesh on its compile-only
devices, compile the training step, and (optionally) search for the largest batch, the
compiles spread over worker processes (harness/fit/pool.py) and answered from the disk
cache where asked before (harness/fit/cache.py).

    report = run_fit(load_preset("v5litepod-16").replace(model="transformer", model_size="1b"))
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
from jax.sharding import Mesh

from harness.config import ModelConfig, TrainConfig
from harness.errors import UsageError
from harness.fit.compile import ArgumentBytes, argument_bytes
from harness.fit.economics import Assumptions, step_cost
from harness.fit.libtpu import compiler_hbm_bytes, topology_devices
from harness.fit.plan import SavePlan, checkpoint_bytes
from harness.fit.pool import CompilePool
from harness.fit.progress import CompileProgress, describe_settings
from harness.fit.report import CompileCount, FitReport, MemoryByKind, WiderFsdp
from harness.fit.roofline import StepTimeBound, step_time_bound
from harness.fit.sweep import Unit, new_search, run_units
from harness.fit.topology import Target, resolve
from harness.models.interface import Model
from harness.runtime.mesh import make_mesh
from harness.train.step import TrainState, abstract_state, build_model


def check_divisibility(batch_size: int, fsdp_devices: int, target: Target) -> None:
    """Training's start-up checks, against the target's devices and hosts."""
    devices, hosts = target.num_devices, target.hosts_per_slice * target.num_slices
    if target.devices_per_slice % fsdp_devices:
        raise UsageError(f"--fsdp_devices={fsdp_devices} does not divide the {target.devices_per_slice} "
                         f"devices of a {target.product} slice")
    if batch_size % devices:
        raise UsageError(f"--batch_size={batch_size} is not divisible by the {devices} devices of "
                         f"{target.product}" + (f" x {target.num_slices} slices" if target.num_slices > 1 else ""))
    if batch_size % hosts:
        raise UsageError(f"--batch_size={batch_size} is not divisible by the {hosts} hosts")


def describe_model(model_config: ModelConfig, model: Model, abstract_params: Any) -> dict[str, Any]:
    return {
        "name": model_config.name, "size": model_config.size,
        "parameters": sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_params)),
        "param_dtype": model_config.param_dtype, "compute_dtype": model_config.compute_dtype,
        "remat": model_config.remat, "analytic_flops": hasattr(model, "train_flops"),
    }


@dataclasses.dataclass
class Prepared:
    """One setting on one target, ready to compile: what the report needs besides the compiler."""

    config: TrainConfig
    target: Target
    model: Model
    mesh: Mesh
    hbm: int                   # usable HBM per device, as the compiler states it
    state: TrainState          # abstract, with the mesh's shardings
    arguments: ArgumentBytes

    def unit(self, *, search: bool, max_compiles: int, compile_requested: bool = True,
             at_least_requested: bool = False) -> Unit:
        """The compiles: the requested batch (unless not `compile_requested`) and its
        search (no smaller than the requested batch if `at_least_requested`)."""
        base = self.arguments.params + self.arguments.optimizer + self.arguments.other
        batch_search = new_search(self.config.data.batch_size, step=self.target.num_devices, hbm_bytes=self.hbm,
                                  max_compiles=max_compiles, base_bytes=base, requested=compile_requested,
                                  at_least_requested=at_least_requested) if search else None
        settings = describe_settings(self.config.model, dict(self.mesh.shape))
        return Unit(self.config, batch_search, compile_requested=compile_requested,
                    note={"hbm_bytes": self.hbm, "settings": settings})


def prepare(config: TrainConfig) -> Prepared:
    """Resolves the target and checks the input (UsageError) before any compile."""
    target = resolve(config.tpu.topology, config.tpu.chip_config, config.mesh.num_slices)
    check_divisibility(config.data.batch_size, config.mesh.fsdp_devices, target)
    model = build_model(config)  # a failing import path is bad input, found before any compile
    devices = topology_devices(target)
    mesh = make_mesh(config.mesh.fsdp_devices, devices)
    hbm = compiler_hbm_bytes(devices[0]) or target.chip.hbm_bytes
    return Prepared(config, target, model, mesh, hbm, abstract_state(config, mesh), argument_bytes(config, mesh))


def step_bound(prepared: Prepared, batch_size: int, compiler_flops: float | None) -> StepTimeBound:
    config = prepared.config.replace(batch_size=batch_size)
    model = prepared.model
    analytic = model.train_flops(batch_size) if hasattr(model, "train_flops") else None
    recompute = model.remat_flops(batch_size) if hasattr(model, "remat_flops") else 0.0
    return step_time_bound(analytic_flops=analytic, compiler_flops_per_device=compiler_flops,
                           num_devices=prepared.target.num_devices, arguments=argument_bytes(config, prepared.mesh),
                           chip=prepared.target.chip, recompute_flops=recompute)


def wider_fsdp(prepared: Prepared) -> WiderFsdp | None:
    """For a setting that does not fit with FSDP over part of the slice: what FSDP over
    all of it would leave of the parameters and optimizer state per device."""
    slice_devices = prepared.target.devices_per_slice
    if prepared.config.mesh.fsdp_devices >= slice_devices:
        return None
    mesh = make_mesh(slice_devices, topology_devices(prepared.target))
    wider = argument_bytes(prepared.config.replace(fsdp_devices=slice_devices), mesh)
    now = prepared.arguments
    return WiderFsdp(slice_devices, wider.params + wider.optimizer, now.params + now.optimizer)


def report_of(prepared: Prepared, unit: Unit, assumptions: Assumptions, *, compiles: CompileCount | None,
              wall_seconds: float) -> FitReport:
    """The report of `unit`'s requested batch (and its search), once compiled."""
    outcome, arguments = unit.outcome, prepared.arguments
    memory = MemoryByKind(
        arguments=arguments, hbm=prepared.hbm,
        compiler_arguments=outcome.memory["argument_size"] if outcome.fits else None,
        temporaries=outcome.memory["temp_size"] if outcome.fits else None,
        outputs_not_aliased=(outcome.memory["output_size"] - outcome.memory["alias_size"]) if outcome.fits else None,
        generated_code=outcome.memory["generated_code_size"] if outcome.fits else None,
        peak=outcome.device_peak if outcome.fits else None,
        host_temporaries=(outcome.memory.get("host_temp_size") or None) if outcome.fits else None,
    )
    bound = step_bound(prepared, prepared.config.data.batch_size, (outcome.cost or {}).get("flops"))
    cost = step_cost(bound, prepared.target, assumptions)
    plan = SavePlan(checkpoint_bytes(prepared.state), assumptions.throughput, assumptions.mtbf_hours * 3600,
                    step_s=cost.estimate_s)
    return FitReport(
        target=prepared.target, model=describe_model(prepared.config.model, prepared.model, prepared.state.params),
        mesh=dict(prepared.mesh.shape), batch_size=prepared.config.data.batch_size, fits=outcome.fits, memory=memory,
        oom=outcome.oom, compile_seconds=outcome.seconds, program_fingerprint=outcome.fingerprint,
        census=outcome.census, bound=bound, compiler_cost=outcome.cost,
        search=unit.search.result() if unit.search is not None else None,
        cost=cost, plan=plan, compiles=compiles, wall_seconds=wall_seconds,
        wider_fsdp=None if outcome.fits else wider_fsdp(prepared),
        compiler_memory=outcome.memory,
    )


def run_fit(config: TrainConfig, *, search: bool = True, max_compiles: int = 16,
            progress: CompileProgress | None = None, workers: int = 1, cache_dir: str = "",
            compile_timeout_s: float = 3600.0, assumptions: Assumptions = Assumptions()) -> FitReport:
    """Compiles `config`'s training step for its TPU target, telling `progress` of each
    compile. UsageError for bad input; running out of HBM is a report with `fits=False`.
    `workers` > 1 compiles in that many processes; `cache_dir` ("" = none) keeps outcomes."""
    started = time.perf_counter()
    prepared = prepare(config)
    if progress is not None:
        progress.begin(prepared.target, describe_settings(config.model, dict(prepared.mesh.shape)), prepared.hbm,
                       1 + max_compiles if search else 1)
    workers = workers if search else 1  # one compile: no process to start
    with CompilePool(workers, cache_dir, timeout_s=compile_timeout_s, progress=progress) as pool:
        unit = prepared.unit(search=search, max_compiles=max_compiles)
        run_units(pool, [unit])
        compiles = CompileCount.of(unit.outcomes, workers=pool.workers, worker_peak_rss_mb=dict(pool.peak_rss_mb))
    return report_of(prepared, unit, assumptions, compiles=compiles, wall_seconds=time.perf_counter() - started)
