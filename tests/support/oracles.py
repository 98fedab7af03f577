"""Brute-force references for the hard-example tests, written from the spec rather than
from the code under test: plain loops and full sorts, no numpy selection tricks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from harness.hard_examples.entry import Candidate, IntervalStats


def top_k_oracle(observations: Iterable[tuple[int, float, int]], k: int) -> list[tuple[int, float, int]]:
    """The k best (sample_id, loss, step) of valid finite observations, in arrival order:
    each id at its highest loss (the step it first reached it), sorted by loss desc, id asc."""
    best: dict[int, tuple[float, int]] = {}
    for sample_id, loss, step in observations:
        if sample_id not in best or loss > best[sample_id][0]:
            best[sample_id] = (loss, step)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))
    return [(sample_id, loss, step) for sample_id, (loss, step) in ranked[:k]]


def interval_stats_oracle(
    steps: Sequence[int], valid_losses: Sequence[float], high_loss_threshold: float
) -> dict:
    """What a host's interval stats should say, from every step passed to update and the
    losses of every valid (unmasked) sample seen."""
    finite = [loss for loss in valid_losses if math.isfinite(loss)]
    return {
        "first_step": min(steps, default=None),
        "last_step": max(steps, default=None),
        "num_samples": len(valid_losses),
        "loss_sum": math.fsum(finite),
        "loss_max": max(finite, default=None),
        "loss_min": min(finite, default=None),
        "num_high_loss": sum(1 for loss in finite if loss > high_loss_threshold),
        "num_nonfinite": len(valid_losses) - len(finite),
    }


def merge_oracle(per_host: Sequence[Sequence[Candidate]], k: int) -> list[Candidate]:
    """Quota formulation of the round-robin merge: q is the largest integer with
    sum_h min(q, len_h) <= k; every host gives its top min(q, len_h); the remaining
    slots go to the highest losses left (ties: host, sample_id); the result is sorted by
    (loss desc, host, sample_id)."""
    hosts = []
    for candidates in per_host:
        best: dict[int, Candidate] = {}
        for c in candidates:
            if c.sample_id not in best or c.loss > best[c.sample_id].loss:
                best[c.sample_id] = c
        hosts.append(sorted(best.values(), key=lambda c: (-c.loss, c.sample_id)))

    longest = max((len(h) for h in hosts), default=0)
    quota = 0
    while quota < longest and sum(min(quota + 1, len(h)) for h in hosts) <= k:
        quota += 1
    taken = [c for h in hosts for c in h[:quota]]
    left = sorted((c for h in hosts for c in h[quota:]), key=lambda c: (-c.loss, c.host, c.sample_id))
    taken += left[: max(0, k - len(taken))]
    return sorted(taken, key=lambda c: (-c.loss, c.host, c.sample_id))


def merge_stats_oracle(per_host_stats: Sequence[IntervalStats], merged: Sequence[Candidate]) -> dict:
    total, finite, loss_sum = 0, 0, 0.0
    maxima, minima, first, last = [], [], [], []
    nonfinite = high = 0
    for s in per_host_stats:
        total += s.num_samples
        nonfinite += s.num_nonfinite
        finite += s.num_samples - s.num_nonfinite
        high += s.num_high_loss
        loss_sum += s.loss_sum
        if s.loss_max is not None:
            maxima.append(s.loss_max)
            minima.append(s.loss_min)
        if s.first_step is not None:
            first.append(s.first_step)
            last.append(s.last_step)
    return {
        "num_hosts": len(per_host_stats),
        "first_step": min(first) if first else None,
        "last_step": max(last) if last else None,
        "num_samples": total,
        "num_nonfinite": nonfinite,
        "num_high_loss": high,
        "loss_mean": loss_sum / finite if finite else None,
        "loss_max": max(maxima) if maxima else None,
        "loss_min": min(minima) if minima else None,
        "threshold": min(c.loss for c in merged) if merged else None,
    }


def hard_by_label_noise(actions: np.ndarray) -> np.ndarray:
    """Which samples the mock data made hard, judged from outside: hard samples carry
    label-noise variance 3-9 in their target actions, easy ones 0.3-1.2 (plus a small signal)."""
    return actions.reshape(len(actions), -1).var(axis=1) > 2.2
