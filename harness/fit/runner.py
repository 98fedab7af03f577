"""One harness-fit run: resolve the target, build training's mesh on its compile-only
devices, compile the training step, and (optionally) search for the largest batch, the
compiles spread over worker processes (harness/fit/pool.py) and answered from the disk
cache where asked before (harness/fit/cache.py).

    report = run_fit(load_preset("v5litepod-16").replace(model="transformer", model_size="1b"))
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax

from harness.config import TrainConfig
from harness.errors import UsageError
from harness.fit.compile import argument_bytes
from harness.fit.economics import Assumptions, step_cost
from harness.fit.libtpu import compiler_hbm_bytes, topology_devices
from harness.fit.plan import SavePlan, checkpoint_bytes
from harness.fit.pool import CompilePool
from harness.fit.progress import CompileProgress, describe_settings
from harness.fit.report import CompileCount, FitReport, MemoryByKind
from harness.fit.roofline import step_time_bound
from harness.fit.sweep import Unit, new_search, run_units
from harness.fit.topology import Target, resolve
from harness.models.interface import Model
from harness.runtime.mesh import make_mesh
from harness.train.step import abstract_state, build_model


def check_divisibility(config: TrainConfig, target: Target) -> None:
    """Training's start-up checks, against the target's devices and hosts."""
    devices, hosts = target.num_devices, target.hosts_per_slice * target.num_slices
    if target.devices_per_slice % config.mesh.fsdp_devices:
        raise UsageError(f"--fsdp_devices={config.mesh.fsdp_devices} does not divide the {target.devices_per_slice} "
                         f"devices of a {target.product} slice")
    if config.data.batch_size % devices:
        raise UsageError(f"--batch_size={config.data.batch_size} is not divisible by the {devices} devices of "
                         f"{target.product}" + (f" x {target.num_slices} slices" if target.num_slices > 1 else ""))
    if config.data.batch_size % hosts:
        raise UsageError(f"--batch_size={config.data.batch_size} is not divisible by the {hosts} hosts")


def describe_model(config: TrainConfig, model: Model, abstract_params: Any) -> dict[str, Any]:
    return {
        "name": config.model.name, "size": config.model.size,
        "parameters": sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_params)),
        "param_dtype": config.model.param_dtype, "compute_dtype": config.model.compute_dtype, "remat": config.model.remat,
        "analytic_flops": hasattr(model, "train_flops"),
    }


def run_fit(config: TrainConfig, *, search: bool = True, max_compiles: int = 16,
            progress: CompileProgress | None = None, workers: int = 1, cache_dir: str = "",
            compile_timeout_s: float = 3600.0, assumptions: Assumptions = Assumptions()) -> FitReport:
    """Compiles `config`'s training step for its TPU target, telling `progress` of each
    compile. UsageError for bad input; running out of HBM is a report with `fits=False`.
    `workers` > 1 compiles in that many processes; `cache_dir` ("" = none) keeps outcomes."""
    started = time.perf_counter()
    target = resolve(config.tpu.topology, config.tpu.chip_config, config.mesh.num_slices)
    check_divisibility(config, target)
    model = build_model(config)  # a failing import path is bad input, found before any compile
    devices = topology_devices(target)
    mesh = make_mesh(config.mesh.fsdp_devices, devices)
    hbm = compiler_hbm_bytes(devices[0]) or target.chip.hbm_bytes
    state = abstract_state(config, mesh)
    arguments = argument_bytes(config, mesh)

    if progress is not None:
        progress.begin(target, describe_settings(config, dict(mesh.shape)), hbm, 1 + max_compiles if search else 1)
    workers = workers if search else 1  # one compile: no process to start
    with CompilePool(workers, cache_dir, timeout_s=compile_timeout_s, progress=progress) as pool:
        base = arguments.params + arguments.optimizer + arguments.other
        unit = Unit(config, new_search(config, step=target.num_devices, hbm_bytes=hbm, max_compiles=max_compiles,
                                       base_bytes=base) if search else None)
        run_units(pool, [unit])
        peak_rss = dict(pool.peak_rss_mb)
    outcome = unit.outcome
    memory = MemoryByKind(
        arguments=arguments, hbm=hbm,
        compiler_arguments=outcome.memory["argument_size"] if outcome.fits else None,
        temporaries=outcome.memory["temp_size"] if outcome.fits else None,
        outputs_not_aliased=(outcome.memory["output_size"] - outcome.memory["alias_size"]) if outcome.fits else None,
        generated_code=outcome.memory["generated_code_size"] if outcome.fits else None,
        peak=outcome.memory["peak_memory"] if outcome.fits else None,
    )
    analytic = model.train_flops(config.data.batch_size) if hasattr(model, "train_flops") else None
    bound = step_time_bound(analytic_flops=analytic,
                            compiler_flops_per_device=(outcome.cost or {}).get("flops"),
                            num_devices=target.num_devices, arguments=arguments, chip=target.chip)
    cost = step_cost(bound, target, assumptions)
    plan = SavePlan(checkpoint_bytes(state), assumptions.throughput, assumptions.mtbf_hours * 3600,
                    step_s=cost.estimate_s)
    return FitReport(
        target=target, model=describe_model(config, model, state.params), mesh=dict(mesh.shape),
        batch_size=config.data.batch_size, fits=outcome.fits, memory=memory, oom=outcome.oom,
        compile_seconds=outcome.seconds, program_fingerprint=outcome.fingerprint,
        census=outcome.census, bound=bound, compiler_cost=outcome.cost,
        search=unit.search.result() if unit.search is not None else None,
        cost=cost, plan=plan,
        compiles=CompileCount.of(unit.outcomes, workers=pool.workers, worker_peak_rss_mb=peak_rss),
        wall_seconds=time.perf_counter() - started,
    )
