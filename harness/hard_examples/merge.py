"""The cross-host merge: every host runs it on the same gathered candidates and gets the
same winners, so no host has to tell the others what was chosen.

Round-robin keeps one host with many high losses (a bad shard, a broken camera) from
filling the whole log: each round takes every host's next-best entry, whole rounds are
taken while they fit in `k`, and only the slots left after that go to the highest
losses overall.

Both take anything `codec.decode_payload` lets through, extreme finite floats included
(1.7e308, subnormals): `merge_round_robin` fails only with ValueError (two hosts
claiming one sample), which the gather turns into an interval that logs nothing, and
`merge_stats` does not fail on decoded stats.

Tests: `.venv/bin/python -m pytest -q tests/test_merge.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from harness.hard_examples.entry import Candidate, IntervalStats


@dataclasses.dataclass(frozen=True)
class GlobalStats:
    """The interval over all hosts. `loss_mean` averages the finite losses (exactly, and
    within [loss_min, loss_max]); `threshold` is the lowest loss among the merged
    (logged) candidates. Loss fields are None when there is nothing to take them from."""

    num_hosts: int
    first_step: int | None
    last_step: int | None
    num_samples: int
    num_nonfinite: int
    num_high_loss: int
    loss_mean: float | None
    loss_max: float | None
    loss_min: float | None
    threshold: float | None


def merge_round_robin(per_host: Sequence[Sequence[Candidate]], k: int) -> list[Candidate]:
    """The `k` winners of the hosts' candidates, loss descending (ties: host, sample_id).

    `per_host[h]` holds host h's candidates, in any order. A sample_id listed twice by
    one host counts once, at its highest loss (equal losses: the first listed); a
    sample_id listed by two hosts is an upstream bug and raises ValueError, as do
    non-finite losses. Vectorized: 1024 hosts x 50 candidates merge in ~7 ms (2 cores).
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    flat = [c for candidates in per_host for c in candidates]
    if not flat or k == 0:
        return []
    listed_by = np.repeat(np.arange(len(per_host)), [len(c) for c in per_host])
    hosts = np.array([c.host for c in flat], dtype=np.int64)
    if np.any(hosts != listed_by):
        i = int(np.flatnonzero(hosts != listed_by)[0])
        raise ValueError(f"per_host[{listed_by[i]}] holds a candidate of host {hosts[i]}: {flat[i]}")
    losses = np.array([c.loss for c in flat], dtype=np.float64)
    ids = np.array([c.sample_id for c in flat], dtype=np.int64)
    if not np.isfinite(losses).all():
        raise ValueError(f"non-finite loss in {flat[int(np.flatnonzero(~np.isfinite(losses))[0])]}")

    kept = _one_per_sample(hosts, ids, losses)
    rounds = _whole_rounds(np.bincount(hosts[kept], minlength=len(per_host)), k)
    if rounds:
        ranked = kept[np.lexsort((ids[kept], -losses[kept], hosts[kept]))]
        starts = np.ones(ranked.size, dtype=bool)
        starts[1:] = hosts[ranked][1:] != hosts[ranked][:-1]
        positions = np.arange(ranked.size)
        rank = positions - np.maximum.accumulate(np.where(starts, positions, 0))
        chosen, rest = ranked[rank < rounds], ranked[rank >= rounds]
    else:
        chosen, rest = kept[:0], kept
    chosen = np.concatenate([chosen, _best(rest, k - chosen.size, hosts, ids, losses)])
    final = chosen[np.lexsort((ids[chosen], hosts[chosen], -losses[chosen]))]
    return [flat[i] for i in final.tolist()]


def _one_per_sample(hosts: np.ndarray, ids: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Indices keeping each sample_id once: its highest loss, the first listed on ties."""
    sorted_ids = np.sort(ids)
    if not np.any(sorted_ids[1:] == sorted_ids[:-1]):
        return np.arange(ids.size)
    order = np.lexsort((-losses, ids))
    first = np.ones(ids.size, dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    owner = hosts[order][first][np.cumsum(first) - 1]
    clash = np.flatnonzero(hosts[order] != owner)
    if clash.size:
        shared = int(ids[order][clash[0]])
        owners = sorted(set(hosts[ids == shared].tolist()))
        raise ValueError(f"sample_id {shared} comes from several hosts {owners}")
    return order[first]


def _whole_rounds(lengths: np.ndarray, k: int) -> int:
    """How many whole rounds fit in k: round r takes one entry of every host with more
    than r entries."""
    round_sizes = lengths.size - np.cumsum(np.bincount(lengths))[:-1]
    return int(np.searchsorted(np.cumsum(round_sizes), k, side="right"))


def _best(pool: np.ndarray, count: int, hosts: np.ndarray, ids: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """The `count` best of `pool` by (loss desc, host, sample_id)."""
    if count <= 0 or pool.size == 0:
        return pool[:0]
    if pool.size > count:
        cutoff = np.partition(losses[pool], pool.size - count)[pool.size - count]
        pool = pool[losses[pool] >= cutoff]
    return pool[np.lexsort((ids[pool], hosts[pool], -losses[pool]))][:count]


def merge_stats(per_host_stats: Sequence[IntervalStats], merged: Sequence[Candidate]) -> GlobalStats:
    """Sums the hosts' interval stats; `merged` is what `merge_round_robin` returned.
    Never overflows (see `_mean`); ValueError only for stats that count finite losses
    without a loss_max/loss_min, which `decode_payload` refuses."""
    num_samples = sum(s.num_samples for s in per_host_stats)
    num_finite = sum(s.num_finite for s in per_host_stats)
    first_steps = [s.first_step for s in per_host_stats if s.first_step is not None]
    last_steps = [s.last_step for s in per_host_stats if s.last_step is not None]
    maxima = [s.loss_max for s in per_host_stats if s.loss_max is not None]
    minima = [s.loss_min for s in per_host_stats if s.loss_min is not None]
    loss_max, loss_min = max(maxima, default=None), min(minima, default=None)
    return GlobalStats(
        num_hosts=len(per_host_stats),
        first_step=min(first_steps, default=None),
        last_step=max(last_steps, default=None),
        num_samples=num_samples,
        num_nonfinite=sum(s.num_nonfinite for s in per_host_stats),
        num_high_loss=sum(s.num_high_loss for s in per_host_stats),
        loss_mean=_mean([s.loss_sum for s in per_host_stats], num_finite, loss_min, loss_max),
        loss_max=loss_max,
        loss_min=loss_min,
        threshold=min((c.loss for c in merged), default=None),
    )


def _mean(sums: Sequence[float], num_finite: int, low: float | None, high: float | None) -> float | None:
    """The mean of the finite losses from the hosts' sums, in exact arithmetic: two
    hosts' finite sums of 1.7e308 overflow any float sum (math.fsum raises). The result
    is rounded once and kept within [low, high], where a mean of losses must lie; that
    absorbs the hosts' own rounding and makes it finite whatever finite sums arrive."""
    if not num_finite:
        return None
    if low is None or high is None:
        raise ValueError(f"the stats count {num_finite} finite losses but give no loss_max/loss_min")
    mean = sum(map(Fraction, sums), Fraction(0)) / num_finite
    return float(min(max(mean, Fraction(low)), Fraction(high)))
