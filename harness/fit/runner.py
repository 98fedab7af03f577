"""One harness-fit run: resolve the target, build training's mesh on its compile-only
devices, compile the training step, and (optionally) search for the largest batch.

    report = run_fit(load_preset("v5litepod-16").replace(model="transformer", model_size="1b"))
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax

from harness.config import TrainConfig
from harness.errors import UsageError
from harness.fit.census import collective_census
from harness.fit.compile import CompileOutcome, argument_bytes, compile_train_step
from harness.fit.libtpu import compiler_hbm_bytes, topology_devices
from harness.fit.progress import CompileProgress, describe_settings
from harness.fit.report import FitReport, MemoryByKind
from harness.fit.roofline import step_time_bound
from harness.fit.search import largest_batch
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


def run_fit(config: TrainConfig, *, search: bool = True, max_compiles: int = 8,
            progress: CompileProgress | None = None) -> FitReport:
    """Compiles `config`'s training step for its TPU target, telling `progress` of each
    compile. UsageError for bad input; running out of HBM is a report with `fits=False`."""
    started = time.perf_counter()
    target = resolve(config.tpu.topology, config.tpu.chip_config, config.mesh.num_slices)
    check_divisibility(config, target)
    model = build_model(config)  # a failing import path is bad input, found before any compile
    devices = topology_devices(target)
    mesh = make_mesh(config.mesh.fsdp_devices, devices)
    hbm = compiler_hbm_bytes(devices[0]) or target.chip.hbm_bytes
    state = abstract_state(config, mesh)

    def compile_reported(run_config: TrainConfig, keep_hlo: bool = False) -> CompileOutcome:
        if progress is not None:
            progress.started(run_config.data.batch_size, target.num_devices)
        compiled = compile_train_step(run_config, mesh, keep_hlo=keep_hlo)
        if progress is not None:
            progress.finished(compiled)
        return compiled

    if progress is not None:
        progress.begin(target, describe_settings(config, dict(mesh.shape)), hbm, 1 + max_compiles if search else 1)
    outcome = compile_reported(config, keep_hlo=True)
    arguments = argument_bytes(config, mesh)
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

    def compile_at(batch_size: int) -> CompileOutcome:
        return compile_reported(config.replace(batch_size=batch_size))

    result = largest_batch(compile_at, outcome, step=target.num_devices, hbm_bytes=hbm,
                           max_compiles=max_compiles) if search else None
    return FitReport(
        target=target, model=describe_model(config, model, state.params), mesh=dict(mesh.shape),
        batch_size=config.data.batch_size, fits=outcome.fits, memory=memory, oom=outcome.oom,
        compile_seconds=outcome.seconds, program_fingerprint=outcome.fingerprint,
        census=collective_census(outcome.hlo_text) if outcome.hlo_text else None,
        bound=bound, compiler_cost=outcome.cost, search=result,
        wall_seconds=time.perf_counter() - started,
    )
