"""A tiny training loop in the test process: the real jitted step on the mock data, for
tests that look inside a run (layouts, losses, mesh invariance) instead of at the CLI."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from harness.config import DataConfig, TrainConfig
from harness.mock.data import Batch, MockDataset
from harness.runtime.mesh import make_global_batch
from harness.train.step import TrainState, make_train_step, state_shardings
from tests.support.oracles import hard_by_label_noise


def train_steps(config: TrainConfig, mesh: Mesh, state: TrainState, steps: int,
                ) -> tuple[TrainState, np.ndarray, dict[str, Any]]:
    """`steps` steps from `state` on the mock batches 0, 1, ...: the final state, each
    step's loss and the first step's metrics. Blocks on every loss: many queued steps can
    abort XLA's CPU all-gather."""
    step = make_train_step(config, mesh)
    dataset = MockDataset(config.data, config.run.seed)
    losses, first = [], {}
    for i in range(steps):
        state, metrics = step(state, make_global_batch(dataset.batch_at(i), mesh))
        losses.append(float(metrics["loss"]))
        if i == 0:
            first = metrics
    return state, np.asarray(losses), first


def losses_from(config: TrainConfig, mesh: Mesh, host_state: TrainState, steps: int) -> np.ndarray:
    """Each step's loss from a host copy of a state, put on `mesh`'s FSDP layout (no init
    compile): the same steps on another mesh must give the same losses."""
    state = jax.device_put(host_state, state_shardings(config, mesh))
    return train_steps(config, mesh, state, steps)[1]


def held_out_batch(data: DataConfig, size: int) -> tuple[Batch, np.ndarray]:
    """A large held-out batch (seed 99, which no training run uses) and its hard-sample
    mask (tests/support/oracles.py)."""
    batch = MockDataset(dataclasses.replace(data, batch_size=size), seed=99).batch_at(0)
    return batch, hard_by_label_noise(batch.actions)
