"""The cross-host gather with one hostile host, in one process: three simulated hosts on
threads, a fake allgather where they meet (a barrier with a timeout), and the gather's
`encode_candidates` hook to make one host send what the tampers of
`tests/support/hostile.py` make of its payload. Every host must finish, make the same collectives (one or
two per phase, each on collectives.py's width ladder), agree on what was skipped and
why, and log the other hosts' entries.

Every host decodes phase 2 as well, so every simulated host returns the logged entries.

Run: .venv/bin/python -m pytest -q tests/test_gather_hostile.py
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable
from functools import partial

import msgpack
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from harness.hard_examples.codec import CandidatePayload, decode_payload, encode_payload
from harness.hard_examples.entry import Candidate
from harness.hard_examples.gather import GatherResult, gather_hard_examples
from harness.hard_examples.tracker import HardExampleTracker
from harness.runtime.collectives import padded_width
from harness.runtime.messages import MAX_MESSAGE_CHARS, VERSION, MessageError
from harness.config import DataConfig
from harness.mock.data import MockDataset
from tests.support.hostile import ANY_FINITE, TAMPERS, Tamper, hostile
from tests.support.oracles import merge_oracle, merge_stats_oracle
from tests.support.thread_pod import ThreadPod

HOSTS = 3
K = 4
STEP = 2  # the gather's step: trackers are fed steps 0 and 1
BARRIER_TIMEOUT_S = 30
Encoder = Callable[[CandidatePayload], bytes]


@functools.cache
def tracker(host: int) -> HardExampleTracker:
    """Host's tracker after two steps of mock batches (the gather only reads it)."""
    dataset = MockDataset(DataConfig(batch_size=4 * HOSTS, image_size=8, num_cameras=1, seq_len=32),
                          seed=5, process_index=host, process_count=HOSTS)
    tracker = HardExampleTracker(K, dataset.tokenizer, host=host, resize_hw=(4, 4))
    rng = np.random.default_rng([5, host])
    for step in range(STEP):
        batch = dataset.batch_at(step)
        tracker.update(step, batch, rng.gamma(2.0, 1.0 + host, batch.size), batch.sample_id)
    return tracker


def run_pod(encoders: dict[int, Encoder]) -> tuple[list[GatherResult], list[list[tuple]]]:
    """Every host's gather result and its collectives ((dtype, shape) in call order);
    `encoders` replaces some hosts' `encode_candidates`."""
    pod = ThreadPod(HOSTS, BARRIER_TIMEOUT_S)
    results = pod.run(lambda host: gather_hard_examples(
        tracker(host), step=STEP, k=K, allgather=pod.allgather_for(host),
        encode_candidates=encoders.get(host, encode_payload)))
    return results, pod.calls


def summary(result: GatherResult) -> dict:
    return {"bad_hosts": result.bad_hosts, "stats": dataclasses.asdict(result.stats),
            "entries": [(e.host, e.sample_id, e.loss, e.step) for e in result.examples]}


def honest_candidates(host: int) -> list[Candidate]:
    return tracker(host).candidates()[:K]


def received(host: int, data: bytes) -> CandidatePayload | None:
    """What the others make of host's bytes: its payload, or None when they skip it."""
    try:
        payload = decode_payload(data, CandidatePayload, max_entries=K)
    except MessageError:
        return None
    return payload if (payload.host, payload.step) == (host, STEP) else None


def check_one_hostile_host(bad: int, encode: Encoder) -> dict:
    """Runs the pod with `bad` sending `encode`'s bytes and checks it against the oracle;
    returns host 0's summary."""
    results, calls = run_pod({bad: encode})
    sent = encode(CandidatePayload(bad, STEP, tracker(bad).stats(), honest_candidates(bad)))
    payload = received(bad, sent)
    assert all(c == calls[0] and 2 <= len(c) <= 4 for c in calls), calls  # same collectives, same order
    assert all(dtype == "uint8" and shape == (padded_width(shape[0]),) for dtype, shape in calls[0]), calls
    assert all(summary(r) == summary(results[0]) for r in results)  # every host decided the same
    result = results[0]
    for host, why in result.bad_hosts.items():
        assert why.startswith(f"payload from host {host}: " if host >= 0 else "merge refused")
        assert len(why) <= MAX_MESSAGE_CHARS

    per_host = [honest_candidates(host) for host in range(HOSTS)]
    per_host[bad] = payload.candidates if payload else []
    if payload is None:
        assert set(result.bad_hosts) == {bad}
    if any({c.sample_id for c in a} & {c.sample_id for c in b} for a, b in itertools.combinations(per_host, 2)):
        assert set(result.bad_hosts) == {-1} and result.examples == []  # the merge refuses the interval
        return summary(result)
    merged = merge_oracle(per_host, K)
    held = {c.sample_id for c in honest_candidates(bad)}
    logged = [c for c in merged if c.host != bad or c.sample_id in held]
    assert [(e.host, e.sample_id) for e in result.examples] == [(c.host, c.sample_id) for c in logged]
    if payload is not None:
        unsent = len(merged) - len(logged)
        assert result.bad_hosts == ({bad: f"payload from host {bad}: no example for {unsent} of its winners"}
                                    if unsent else {})
    stats = [payload.stats if host == bad else tracker(host).stats()
             for host in range(HOSTS) if host != bad or payload]
    got = dataclasses.asdict(result.stats)
    assert {**got, "loss_mean": None} == {**merge_stats_oracle(stats, merged), "loss_mean": None}
    if got["loss_mean"] is not None:  # its exact value: tests/test_merge.py
        assert math.isfinite(got["loss_mean"]) and got["loss_min"] <= got["loss_mean"] <= got["loss_max"]
    return summary(result)


def forge(payload: CandidatePayload, *, ids: list[int], losses: list[float], loss_sum: float) -> bytes:
    """A valid payload from the right host, with made-up candidates (ids another host
    has, or none has) and loss sum."""
    candidates = [Candidate(i, loss, payload.step, payload.host) for i, loss in zip(ids, losses)]
    stats = dataclasses.replace(payload.stats, loss_sum=loss_sum)
    return encode_payload(dataclasses.replace(payload, stats=stats, candidates=candidates))


def tampered(payload: CandidatePayload, *, tamper: Tamper) -> bytes:
    """What a tamper makes of the host's honest payload."""
    return tamper(encode_payload(payload))


FORGERIES = st.builds(partial, st.just(forge), ids=st.lists(st.integers(0, 40), max_size=K, unique=True),
                      losses=st.lists(ANY_FINITE, min_size=K, max_size=K), loss_sum=ANY_FINITE)


@hostile(300)
@given(bad=st.integers(0, HOSTS - 1), encode=st.builds(partial, st.just(tampered), tamper=TAMPERS) | FORGERIES)
def test_one_hostile_host_is_skipped_or_merged_and_the_others_are_logged(bad, encode):
    check_one_hostile_host(bad, encode)


def test_a_host_claiming_a_sample_it_does_not_hold_is_named_and_the_rest_logged():
    """Its claim wins the merge, but it can only send examples it holds (materialize()
    would raise between the collectives); the others log the rest and name it."""
    result = check_one_hostile_host(1, partial(forge, ids=[10**6], losses=[1e6], loss_sum=0.0))
    assert result["bad_hosts"] == {1: "payload from host 1: no example for 1 of its winners"}
    assert {host for host, *_ in result["entries"]} == {0, 2}


def send_as(data: bytes) -> Encoder:
    return lambda payload: data


def test_a_host_sending_1000_levels_of_nesting_is_named_and_skipped():
    nested = msgpack.packb([VERSION, "candidates", None])[:-1] + b"\x91" * 1000 + b"\x01"
    result = check_one_hostile_host(1, send_as(nested))
    assert result["bad_hosts"] == {1: "payload from host 1: too deep or too large to read (RecursionError)"}
    assert {host for host, *_ in result["entries"]} == {0, 2}


def test_a_host_sending_a_16_8_mb_value_is_named_in_one_short_line():
    result = check_one_hostile_host(2, send_as(msgpack.packb([VERSION, "x" * 16_800_000, {}])))
    assert result["bad_hosts"] == {2: "payload from host 2: not a [version, kind, body] frame: Expected `str` of "
                                      "length <= 64 - at `$[1]`"}


def test_two_hosts_with_loss_sums_of_1_7e308_are_merged():
    """Valid payloads: nobody is skipped, and the mean stays a finite float."""
    def huge_sum(payload: CandidatePayload) -> bytes:
        return encode_payload(dataclasses.replace(payload, stats=dataclasses.replace(payload.stats, loss_sum=1.7e308)))

    results, _ = run_pod({0: huge_sum, 1: huge_sum})
    merged = merge_oracle([honest_candidates(host) for host in range(HOSTS)], K)
    for result in results:
        assert result.bad_hosts == {}
        assert [(e.host, e.sample_id) for e in result.examples] == [(c.host, c.sample_id) for c in merged]
        assert result.stats.loss_mean == result.stats.loss_max  # (2 * 1.7e308 + ...) / n, kept within the extremes
