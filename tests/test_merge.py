"""The cross-host round-robin merge and the global stats, against independent oracles,
and on anything the codec lets through (extreme finite floats, ids shared by hosts):
ValueError or a finite result, nothing else.

Run: .venv/bin/python -m pytest -q tests/test_merge.py
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.hard_examples.codec import CandidatePayload, decode_payload, encode_payload
from harness.hard_examples.entry import Candidate, IntervalStats
from harness.hard_examples.merge import GlobalStats, merge_round_robin, merge_stats
from tests.support.oracles import merge_oracle, merge_stats_oracle
from tests.support.hostile import ANY_FINITE, hostile

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Few distinct losses so ties decide a lot; -0.0 equals 0.0.
TIED_LOSS = st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.0, 2.0, 3.5, 100.0, -2.0])


@st.composite
def host_lists(draw) -> list[list[Candidate]]:
    """Per-host candidate lists in any order; ids unique across hosts, and some ids
    listed twice by the same host."""
    num_hosts = draw(st.integers(1, 20))
    lengths = draw(st.lists(st.integers(0, 30), min_size=num_hosts, max_size=num_hosts))
    ids = iter(draw(st.permutations(range(sum(lengths)))))
    per_host = []
    for host, length in enumerate(lengths):
        own = [Candidate(next(ids), draw(TIED_LOSS), draw(st.integers(0, 3)), host) for _ in range(length)]
        if own and draw(st.booleans()):
            repeated = draw(st.sampled_from(own))
            own.append(dataclasses.replace(repeated, loss=draw(TIED_LOSS), step=draw(st.integers(0, 3))))
        per_host.append(draw(st.permutations(own)))
    return per_host


@FAST
@given(per_host=host_lists(), k=st.integers(0, 60))
def test_matches_quota_oracle(per_host, k):
    merged = merge_round_robin(per_host, k)
    assert merged == merge_oracle(per_host, k)
    distinct = len({c.sample_id for host in per_host for c in host})
    assert len(merged) == min(k, distinct)
    assert len({c.sample_id for c in merged}) == len(merged)


def candidates(host: int, losses, first_id: int) -> list[Candidate]:
    return [Candidate(first_id + i, float(loss), 0, host) for i, loss in enumerate(losses)]


def test_one_loud_host_gets_only_its_share():
    loud = candidates(0, range(100, 130), 0)
    quiet = [candidates(h, [1.0 + 0.01 * i for i in range(30)], 1000 * h) for h in range(1, 5)]
    merged = merge_round_robin([loud, *quiet], 10)
    per_host = [sum(c.host == h for c in merged) for h in range(5)]
    assert per_host == [2, 2, 2, 2, 2]
    assert [c.loss for c in merged[:2]] == [129.0, 128.0]
    # 12 slots: two whole rounds (10), then the two highest losses left, both the loud host's.
    assert [sum(c.host == h for c in merge_round_robin([loud, *quiet], 12)) for h in range(5)] == [4, 2, 2, 2, 2]


def test_fill_goes_to_highest_losses_with_host_then_id_ties():
    per_host = [candidates(0, [5.0, 3.0, 3.0], 10), candidates(1, [4.0, 3.0], 20), candidates(2, [1.0], 30)]
    # One whole round (3); the second (2) doesn't fit in 4, so one slot goes to the best
    # loss left: 3.0 is shared by (host 0, ids 11 and 12) and (host 1, id 21).
    merged = merge_round_robin(per_host, 4)
    assert [(c.host, c.sample_id, c.loss) for c in merged] == [(0, 10, 5.0), (1, 20, 4.0), (0, 11, 3.0), (2, 30, 1.0)]
    assert [c.sample_id for c in merge_round_robin(per_host, 5)] == [10, 20, 11, 21, 30]  # two whole rounds


def test_k_beyond_everything_takes_all_sorted():
    per_host = [candidates(0, [1.0, 7.0], 0), [], candidates(2, [7.0, 3.0, 2.0], 10)]
    merged = merge_round_robin(per_host, 50)
    assert [(c.loss, c.host, c.sample_id) for c in merged] == [
        (7.0, 0, 1), (7.0, 2, 10), (3.0, 2, 11), (2.0, 2, 12), (1.0, 0, 0)]


def test_empty_inputs():
    assert merge_round_robin([], 5) == []
    assert merge_round_robin([[], [], []], 5) == []
    assert merge_round_robin([candidates(0, [1.0], 0)], 0) == []


def test_single_host_is_plain_top_k():
    rng = np.random.default_rng(3)
    losses = rng.integers(0, 5, 40).astype(float)
    host = candidates(0, losses, 100)
    random.Random(0).shuffle(host)
    expected = sorted(host, key=lambda c: (-c.loss, c.sample_id))[:17]
    assert merge_round_robin([host], 17) == expected


def test_a_sample_listed_twice_by_one_host_counts_once_at_its_highest_loss():
    first = Candidate(5, 2.0, 1, 0)
    higher = Candidate(5, 6.0, 2, 0)
    tie = Candidate(5, 6.0, 3, 0)
    assert merge_round_robin([[first, higher, tie, Candidate(6, 1.0, 0, 0)]], 2) == [higher, Candidate(6, 1.0, 0, 0)]


def test_same_output_whatever_the_order_within_hosts():
    rng = random.Random(1)
    per_host = [candidates(h, [rng.choice([1.0, 2.0, 3.0]) for _ in range(12)], 100 * h) for h in range(6)]
    expected = merge_round_robin(per_host, 20)
    for _ in range(5):
        shuffled = [rng.sample(host, len(host)) for host in per_host]
        assert merge_round_robin(shuffled, 20) == expected


@pytest.mark.parametrize(
    "per_host, k, message",
    [
        ([[Candidate(1, 1.0, 0, 0)], [Candidate(1, 2.0, 0, 1)]], 2, r"sample_id 1 comes from several hosts \[0, 1\]"),
        ([[Candidate(1, 1.0, 0, 1)]], 2, r"per_host\[0\] holds a candidate of host 1"),
        ([[Candidate(1, float("nan"), 0, 0)]], 2, "non-finite loss"),
        ([[Candidate(1, 1.0, 0, 0)]], -1, "k must be non-negative"),
    ],
)
def test_rejects_inconsistent_input(per_host, k, message):
    with pytest.raises(ValueError, match=message):
        merge_round_robin(per_host, k)


def test_merge_time_for_1024_hosts():
    """Prints the time; no assertion (machines vary). Every host runs this each interval."""
    rng = np.random.default_rng(0)
    per_host = [candidates(h, rng.gamma(2.0, 1.0, 50), 50 * h) for h in range(1024)]
    times = []
    for k in (50, 50, 50, 2000):
        start = time.perf_counter()
        merged = merge_round_robin(per_host, k)
        times.append(time.perf_counter() - start)
        assert len(merged) == k
    print(f"\nmerge 1024 hosts x 50: {min(times[:3]) * 1e3:.1f} ms for k=50, {times[3] * 1e3:.1f} ms for k=2000")
    assert merge_round_robin(per_host, 50) == merge_oracle(per_host, 50)


@st.composite
def host_stats(draw, host: int) -> IntervalStats:
    if draw(st.booleans()):
        return IntervalStats(host, None, None, 0, 0.0, None, None, 0, 0, None)
    first = draw(st.integers(0, 100))
    num_samples = draw(st.integers(0, 500))
    nonfinite = draw(st.integers(0, num_samples))
    finite = num_samples - nonfinite
    low, high = sorted(draw(st.lists(TIED_LOSS, min_size=2, max_size=2))) if finite else (None, None)
    # Eighths, so every sum is exact; between finite * low and finite * high, as a real sum is.
    loss_sum = draw(st.integers(int(finite * low * 8), int(finite * high * 8))) / 8 if finite else 0.0
    return IntervalStats(host, first, first + draw(st.integers(0, 50)), num_samples, loss_sum, high, low,
                         draw(st.integers(0, finite)), nonfinite, low)


@FAST
@given(data=st.data(), num_hosts=st.integers(0, 12), k=st.integers(0, 20))
def test_merge_stats_matches_sums(data, num_hosts, k):
    stats = [data.draw(host_stats(h)) for h in range(num_hosts)]
    per_host = [candidates(h, data.draw(st.lists(TIED_LOSS, max_size=6)), 100 * h) for h in range(num_hosts)]
    merged = merge_round_robin(per_host, k)
    got = merge_stats(stats, merged)
    assert dataclasses.asdict(got) == merge_stats_oracle(stats, merged)


def test_two_hosts_with_loss_sums_of_1_7e308_merge():
    """Both payloads decode; math.fsum of the sums raised OverflowError. The exact mean
    is 1.7e308."""
    payloads = [
        decode_payload(encode_payload(CandidatePayload(
            host, 5, IntervalStats(host, 0, 5, 1, 1.7e308, 1.7e308, 1.7e308, 1, 0, None), [])), CandidatePayload)
        for host in (0, 1)
    ]
    assert merge_stats([p.stats for p in payloads], []) == GlobalStats(
        num_hosts=2, first_step=0, last_step=5, num_samples=2, num_nonfinite=0, num_high_loss=2,
        loss_mean=1.7e308, loss_max=1.7e308, loss_min=1.7e308, threshold=None)


BIG = sys.float_info.max


@pytest.mark.parametrize("sums, finite, low, high, mean", [
    ([BIG, BIG, BIG, -BIG], 1, -BIG, BIG, BIG / 2),  # exact: two BIGs over four samples
    ([1.7e308, 1.7e308], 10, 1.0, 2.0, 2.0),  # sums that don't fit the extremes: kept within them
    ([-1.7e308, -1.7e308], 10, -3.0, -1.0, -3.0),
    ([0.1, 0.1, 0.1], 1, 0.1, 0.1, 0.1),  # a float sum would give 0.10000000000000002 > loss_max
    ([5e-324, 5e-324], 1, 5e-324, 5e-324, 5e-324),
], ids=["max-floats", "too-high", "too-low", "rounding", "subnormal"])
def test_merge_stats_mean_is_exact_and_within_the_extremes(sums, finite, low, high, mean):
    stats = [IntervalStats(h, 0, 0, finite, s, high, low, 0, 0, None) for h, s in enumerate(sums)]
    assert merge_stats(stats, []).loss_mean == mean


def test_merge_stats_refuses_finite_losses_without_extremes():
    stats = [IntervalStats(0, 0, 0, 1, 1.0, None, None, 0, 0, None)]
    with pytest.raises(ValueError, match="^the stats count 1 finite losses but give no loss_max/loss_min$"):
        merge_stats(stats, [])


@st.composite
def decoded_payloads(draw) -> list[CandidatePayload]:
    """1-4 hosts' candidate payloads with any finite floats, through the codec: what a
    gather hands the merge. Sample ids come from a small pool, so hosts sometimes share one."""
    payloads = []
    for host in range(draw(st.integers(1, 4))):
        ids = draw(st.lists(st.integers(0, 40), max_size=5, unique=True))
        candidates = [Candidate(i, draw(ANY_FINITE), 0, host) for i in ids]
        finite, nonfinite = draw(st.integers(0, 3)), draw(st.integers(0, 2))
        low, high = sorted([draw(ANY_FINITE), draw(ANY_FINITE)]) if finite else (None, None)
        stats = IntervalStats(host, 0, 0, finite + nonfinite, draw(ANY_FINITE), high, low, finite, nonfinite, None)
        payloads.append(decode_payload(encode_payload(CandidatePayload(host, 0, stats, candidates)),
                                       CandidatePayload))
    return payloads


@hostile(1500)
@given(payloads=decoded_payloads(), k=st.integers(0, 8))
def test_anything_decoded_merges_or_raises_value_error(payloads, k):
    per_host = [p.candidates for p in payloads]
    shared = any(
        {c.sample_id for c in a} & {c.sample_id for c in b} for a, b in itertools.combinations(per_host, 2))
    if shared and k:
        with pytest.raises(ValueError, match="comes from several hosts"):
            merge_round_robin(per_host, k)
        merged = []
    else:
        merged = merge_round_robin(per_host, k)
        assert merged == merge_oracle(per_host, k)

    stats = [p.stats for p in payloads]
    got = merge_stats(stats, merged)
    assert {**dataclasses.asdict(got), "loss_mean": None} == {**merge_stats_oracle(stats, merged), "loss_mean": None}
    finite = sum(s.num_finite for s in stats)
    if not finite:
        assert got.loss_mean is None
        return
    assert math.isfinite(got.loss_mean) and got.loss_min <= got.loss_mean <= got.loss_max
    try:
        total = math.fsum(s.loss_sum for s in stats)  # exact too, when it doesn't overflow
    except OverflowError:
        return
    expected = min(max(total / finite, got.loss_min), got.loss_max)
    assert math.isclose(got.loss_mean, expected, rel_tol=1e-15, abs_tol=1e-300)
