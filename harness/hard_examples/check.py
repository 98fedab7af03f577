"""Focused check of hard-example tracking, one process or many.

    python -m harness.hard_examples.check --steps 50 --batch_size 16 --buffer_size 50 --log_interval 10
    python -m launch.local --num_processes 2 --devices_per_process 1 -- \\
        python -m harness.hard_examples.check --steps 20

Losses come from the mock model at fixed parameters, fed to the tracker in shuffled row
order (pairing must go by sample_id). At each interval every host gathers; process 0
then checks the merged entries against a brute-force oracle built from EVERY host's
losses, re-renders each winner from its (host, step, sample_id) to check that its
image and loss belong to it, and checks the global statistics. Exit 0 if every check
passed, 1 if any failed, 2 for bad flags.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from harness.runtime import distributed
from harness.runtime.collectives import allgather_ints, allgather_rows
from harness.config import DataConfig, ModelConfig
from harness.mock.data import Batch, MockDataset, camera_names
from harness.errors import UsageError, report_error
from harness.hard_examples.gather import GatherResult, gather_hard_examples
from harness.outputs.hard_example_report import format_block
from harness.runtime.schedule import itstime
from harness.hard_examples.tracker import RESAMPLE, HardExampleTracker
from harness.models.mlp import ModelSpec, init_params, per_sample_outputs

RULE = "=" * 80


class Checks:
    """Named pass/fail results; a failure keeps its first counter-example."""

    def __init__(self) -> None:
        self.failures: dict[str, str] = {}
        self.names: list[str] = []

    def expect(self, name: str, ok: bool, detail: str = "") -> None:
        if name not in self.names:
            self.names.append(name)
        if not ok and name not in self.failures:
            self.failures[name] = detail


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.hard_examples.check", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--buffer_size", type=int, default=50)
    parser.add_argument("--log_interval", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--thumbnail_size", type=int, default=32)
    parser.add_argument("--high_loss_threshold", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "buffer_size", "log_interval", "image_size", "thumbnail_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if args.image_size % 4:
        parser.error("--image_size must be a multiple of 4")
    return args


class LossModel:
    """The mock model's per-sample losses at fixed parameters (no dropout), so any host
    can recompute the loss of any sample exactly."""

    def __init__(self, spec: DataConfig, seed: int):
        self.spec = ModelSpec.of(ModelConfig(hidden_dim=64, num_layers=2, dropout_rate=0.0), spec)
        self.params = init_params(self.spec, jax.random.PRNGKey(seed))
        self._fn = jax.jit(lambda p, b: per_sample_outputs(p, b, self.spec, jax.random.PRNGKey(0))[0])

    def __call__(self, batch: Batch) -> np.ndarray:
        return np.asarray(self._fn(self.params, batch))


def oracle_merge(per_host: list[list[tuple[float, int, int]]], k: int) -> list[tuple[float, int, int]]:
    """Brute force from the definition: per-host top-K, quota q = the largest integer with
    sum_h min(q, len_h) <= k, then the best of the rest by loss; sorted by (loss desc,
    host, sample_id). Entries are (loss, host, sample_id)."""
    tops = [sorted(h, key=lambda e: (-e[0], e[2]))[:k] for h in per_host]
    quota = 0
    while quota < max(map(len, tops), default=0) and sum(min(quota + 1, len(t)) for t in tops) <= k:
        quota += 1
    taken = [e for t in tops for e in t[:quota]]
    rest = sorted((e for t in tops for e in t[quota:]), key=lambda e: (-e[0], e[1], e[2]))
    taken += rest[: k - len(taken)]
    return sorted(taken, key=lambda e: (-e[0], e[1], e[2]))


def allgather_interval(seen: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """Every host's (sample_id, loss) pairs of the interval (equal counts per host)."""
    ids = np.asarray([s for s, _ in seen], dtype=np.int32)
    losses = np.asarray([l for _, l in seen], dtype=np.float32)
    all_ids, all_losses = allgather_rows(ids), allgather_rows(losses)
    return [list(zip(h_ids.tolist(), h_losses.tolist())) for h_ids, h_losses in zip(all_ids, all_losses)]


def check_interval(checks: Checks, result: GatherResult, everyone: list[list[tuple[int, float]]],
                   args: argparse.Namespace, spec: DataConfig, model: LossModel) -> None:
    """Process 0's checks of one gathered interval against independent recomputation."""
    per_host = [[(loss, host, sid) for sid, loss in pairs] for host, pairs in enumerate(everyone)]
    expected = oracle_merge(per_host, args.buffer_size)
    got = [(e.loss, e.host, e.sample_id) for e in result.examples]
    checks.expect("merged entries equal the brute-force oracle over all hosts", got == expected,
                  f"step {result.step}: got {got[:3]}..., expected {expected[:3]}...")
    total = sum(len(pairs) for pairs in everyone)
    checks.expect("total_samples is global (all hosts)", result.stats.num_samples == total,
                  f"{result.stats.num_samples} != {total}")
    threshold = min((e.loss for e in result.examples), default=None)
    checks.expect("threshold is the lowest logged loss over all hosts", result.stats.threshold == threshold,
                  f"{result.stats.threshold} != {threshold}")
    checks.expect("no host skipped", not result.bad_hosts, str(result.bad_hosts))
    batches: dict[tuple[int, int], tuple[Batch, np.ndarray]] = {}
    for entry in result.examples:
        key = (entry.host, entry.step)
        if key not in batches:
            batch = MockDataset(spec, args.seed, entry.host, jax.process_count()).batch_at(entry.step)
            batches[key] = (batch, model(batch))
        batch, losses = batches[key]
        rows = np.flatnonzero(batch.sample_id == entry.sample_id)
        checks.expect("every entry's sample_id is in its host's batch of its step", rows.size == 1,
                      f"sample {entry.sample_id} host {entry.host} step {entry.step}")
        if rows.size != 1:
            continue
        row = int(rows[0])
        checks.expect("every entry's loss is its own sample's loss", float(losses[row]) == entry.loss,
                      f"sample {entry.sample_id}: {entry.loss} vs recomputed {float(losses[row])}")
        side = args.thumbnail_size
        panels = [np.asarray(Image.fromarray(batch.images[n][row]).resize((side, side), RESAMPLE))
                  for n in camera_names(spec)]
        checks.expect("every entry's image is its own sample's image",
                      np.array_equal(np.concatenate(panels, axis=1), entry.image),
                      f"sample {entry.sample_id} host {entry.host}")


def run(args: argparse.Namespace) -> int:
    host, hosts = jax.process_index(), jax.process_count()
    if args.batch_size % hosts:
        raise UsageError(f"--batch_size={args.batch_size} is not divisible by the {hosts} processes")
    primary = host == 0
    say = print if primary else (lambda *a, **k: None)
    spec = DataConfig(batch_size=args.batch_size, image_size=args.image_size)
    dataset = MockDataset(spec, args.seed, host, hosts)
    model = LossModel(spec, args.seed)
    tracker = HardExampleTracker(args.buffer_size, dataset.tokenizer, host=host,
                                 resize_hw=(args.thumbnail_size, args.thumbnail_size),
                                 high_loss_threshold=args.high_loss_threshold)
    checks = Checks()
    say(f"{RULE}\nHARD EXAMPLE TRACKING INTEGRATION TEST\n{RULE}")
    for label, value in [("Steps", args.steps), ("Batch size", args.batch_size), ("Buffer size", args.buffer_size),
                         ("Log interval", args.log_interval), ("Process index", host), ("Process count", hosts)]:
        say(f"  {label}: {value}")
    say(RULE)
    shuffle = np.random.default_rng([args.seed, 99, host])
    seen: list[tuple[int, float]] = []
    totals = {"samples": 0, "high": 0, "max": -np.inf}
    for step in range(args.steps):
        batch = dataset.batch_at(step)
        losses = model(batch)
        order = shuffle.permutation(len(losses))
        tracker.update(step, batch, losses[order], batch.sample_id[order])
        seen += list(zip(batch.sample_id.tolist(), losses.tolist()))
        totals["samples"] += len(losses)
        totals["high"] += int(np.sum(losses > args.high_loss_threshold))
        totals["max"] = max(totals["max"], float(losses.max()))
        buffer = tracker.candidates()
        checks.expect("buffer within capacity", len(buffer) <= args.buffer_size, f"{len(buffer)} entries")
        checks.expect("buffer sorted by loss (descending)",
                      all(a.loss >= b.loss for a, b in zip(buffer, buffer[1:])), f"step {step}")
        checks.expect("keys match buffer entries (no duplicates)",
                      len({c.sample_id for c in buffer}) == len(buffer), f"step {step}")
        if not itstime(step + 1, args.log_interval, last=args.steps):
            continue
        entries = tracker.materialize()
        checks.expect("all buffer entries have valid images", all(
            e.image.dtype == np.uint8 and e.image.shape == (args.thumbnail_size, args.thumbnail_size * spec.num_cameras, 3)
            for e in entries), f"step {step}")
        checks.expect("local buffer is the brute-force top-K of this host", [(c.sample_id, c.loss) for c in buffer] ==
                      [(s, l) for l, s in sorted(((l, s) for s, l in seen), key=lambda e: (-e[0], e[1]))][: args.buffer_size],
                      f"step {step}")
        result = gather_hard_examples(tracker, step=step + 1, k=args.buffer_size)
        everyone = allgather_interval(seen)
        if primary:
            say(f"{'-' * 80}\nHARD EXAMPLES AT STEP {step + 1}:")
            for line in format_block(result, printed=3):
                say(line)
            check_interval(checks, result, everyone, args, spec, model)
        tracker.reset()
        seen = []
    say(f"{RULE}\nStatistics (host {host}):\n  Total samples seen: {totals['samples']}\n"
        f"  Total high-loss samples (>{args.high_loss_threshold}): {totals['high']}\n"
        f"  High-loss percentage: {100.0 * totals['high'] / max(totals['samples'], 1):.2f}%\n"
        f"  Max loss seen: {totals['max']:.4f}")
    failed = len(checks.failures)
    for name in checks.names:
        mark = "✗" if name in checks.failures else "✓"
        say(f"{mark} {name}" + (f": {checks.failures[name]}" if name in checks.failures else ""))
    verdict = int(allgather_ints([failed]).sum())
    say(RULE)
    say("✅ TEST PASSED" if verdict == 0 else f"❌ TEST FAILED ({verdict} check(s))")
    return 0 if verdict == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        distributed.initialize("auto")
        return run(args)
    except UsageError as err:
        return report_error("hard_examples_check", err)


if __name__ == "__main__":
    sys.exit(main())
