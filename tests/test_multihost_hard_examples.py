"""Hard examples across real processes on 127.0.0.1: the training run end to end against
the oracles, faults in the cross-host gather, and a host killed mid-training.

    .venv/bin/python -m pytest -q tests/test_multihost_hard_examples.py
    .venv/bin/python -m pytest -q -m soak tests/test_multihost_hard_examples.py   # slow variants

Every process is started through `launch.local` with a `--timeout`, and every wait here
is bounded, so a hang fails a test instead of stalling the suite. Runs are expensive on
two cores (20-40 s each), so each is made once per module and shared.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from harness.config import load_preset
from harness.hard_examples.entry import Candidate, IntervalStats
from tests.support import gather_script
from tests.support.argv import pod_command
from tests.support.oracles import interval_stats_oracle, merge_oracle, merge_stats_oracle, top_k_oracle
from tests.support.runs import (
    failure_report, host_lines, launch_local, local_pod_hosts, processes_in_groups,
    start_local_pod, stop_local_pod, wait_for_output,
)

TRAIN_TIMEOUT_S = 240
GATHER_TIMEOUT_S = 120
KILL_DETECTED_WITHIN_S = 60

# ---------------------------------------------------------------------------------------
# End to end: a whole training run with hard examples, per topology.

TOPOLOGIES = {"2x4": (2, 4, "local-2x4"), "4x2": (4, 2, "local-4x2")}


def owner(sample_id: int, batch_size: int, num_processes: int) -> int:
    """The host that draws a sample (harness/mock/data.py: step*B + host*(B/N) + row)."""
    return (sample_id % batch_size) // (batch_size // num_processes)


@pytest.fixture(scope="module", params=["2x4", pytest.param("4x2", marks=pytest.mark.soak)])
def training_run(request, tmp_path_factory):
    num_processes, devices, preset = TOPOLOGIES[request.param]
    root = tmp_path_factory.mktemp(f"train_{request.param}")
    run_dir = root / "run"
    result = launch_local(
        num_processes, devices,
        pod_command(root, (), "--overwrite", preset=preset, record_per_sample_losses=True),
        timeout=TRAIN_TIMEOUT_S,
    )
    record = run_dir / "per_sample_losses.jsonl"
    losses = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return {"config": load_preset(preset), "num_processes": num_processes, "result": result,
            "run_dir": run_dir, "per_sample_losses": losses}


def intervals(config) -> list[tuple[int, int]]:
    """(first step, steps completed) of each gather: every interval, and the last step."""
    ends = list(range(config.hard_examples.log_interval, config.run.num_train_steps + 1,
                      config.hard_examples.log_interval))
    if ends[-1] != config.run.num_train_steps:
        ends.append(config.run.num_train_steps)
    return list(zip([0, *ends[:-1]], ends))


def interval_observations(run: dict, start: int, end: int) -> dict[int, list[tuple[int, float, int]]]:
    """Host -> every (sample_id, loss, step) of steps start..end-1, from the per-sample
    record and the ownership formula."""
    config, n = run["config"], run["num_processes"]
    per_host: dict[int, list[tuple[int, float, int]]] = {host: [] for host in range(n)}
    for row in run["per_sample_losses"]:
        if start <= row["step"] < end:
            for sample_id, loss in zip(row["sample_id"], row["loss"]):
                per_host[owner(sample_id, config.data.batch_size, n)].append((sample_id, loss, row["step"]))
    return per_host


def step_json(run: dict, end: int) -> dict:
    return json.loads((run["run_dir"] / "hard_examples" / f"step_{end}.json").read_text())


def expected_merge(per_host: dict[int, list[tuple[int, float, int]]], k: int) -> list[Candidate]:
    tops = [[Candidate(s, loss, step, host) for s, loss, step in top_k_oracle(obs, k)]
            for host, obs in sorted(per_host.items())]
    return merge_oracle(tops, k)


def test_training_run_exits_0_and_records_every_step(training_run):
    result, config = training_run["result"], training_run["config"]

    assert result.returncode == 0, failure_report(result)
    rows = training_run["per_sample_losses"]
    assert [row["step"] for row in rows] == list(range(config.run.num_train_steps))
    for row in rows:
        step = row["step"]
        assert sorted(row["sample_id"]) == list(range(step * config.data.batch_size, (step + 1) * config.data.batch_size))
        assert all(math.isfinite(loss) for loss in row["loss"])


def test_only_host_0_prints_the_hard_example_block(training_run):
    result, n = training_run["result"], training_run["num_processes"]
    assert result.returncode == 0, failure_report(result)
    documents = [step_json(training_run, end) for _, end in intervals(training_run["config"])]

    headers = [line for line in host_lines(result.stdout, 0) if line.startswith("  Hard examples:")]
    assert headers == [
        f"  Hard examples: {len(d['entries'])} entries, threshold={d['stats']['threshold']:.4f}, "
        f"total_samples={d['stats']['num_samples']}"
        for d in documents
    ]
    first_entries = [line for line in host_lines(result.stdout, 0) if line.startswith("    #1: loss=")]
    assert first_entries == [
        f"    #1: loss={e['loss']:.4f}, step={e['step']}, host={e['host']}, "
        f"lang_action={e['lang_action']} (len={e['token_len']})..."
        for e in (d["entries"][0] for d in documents)
    ]
    output = result.stdout + result.stderr
    for host in range(1, n):
        assert host_lines(output, host), f"host {host} printed nothing: is the prefix still [host i]?"
        assert not [line for line in host_lines(output, host) if "Hard examples" in line or "#1:" in line]


def test_a_json_file_per_interval(training_run):
    assert training_run["result"].returncode == 0, failure_report(training_run["result"])
    directory = training_run["run_dir"] / "hard_examples"

    assert intervals(training_run["config"]) == [(0, 12), (12, 24)]  # what the presets promise
    assert sorted(p.name for p in directory.glob("step_*.json")) == ["step_12.json", "step_24.json"]


def test_entries_are_the_oracle_merge_of_every_hosts_top_k(training_run):
    assert training_run["result"].returncode == 0, failure_report(training_run["result"])
    k = training_run["config"].hard_examples.buffer_size

    for start, end in intervals(training_run["config"]):
        entries = step_json(training_run, end)["entries"]
        expected = expected_merge(interval_observations(training_run, start, end), k)

        got = [(e["sample_id"], e["loss"], e["step"], e["host"]) for e in entries]
        assert got == [(c.sample_id, c.loss, c.step, c.host) for c in expected], f"step_{end}.json"
        assert [e["rank"] for e in entries] == list(range(1, len(entries) + 1))


def test_each_entry_pairs_with_its_own_sample(training_run):
    """Independent of the oracle: the recorded loss of the entry's sample at the entry's
    step is the entry's loss, and its host owns that sample."""
    assert training_run["result"].returncode == 0, failure_report(training_run["result"])
    config, n = training_run["config"], training_run["num_processes"]
    recorded = {(row["step"], s): loss for row in training_run["per_sample_losses"]
                for s, loss in zip(row["sample_id"], row["loss"])}

    for start, end in intervals(config):
        for entry in step_json(training_run, end)["entries"]:
            assert start <= entry["step"] < end, entry
            assert recorded[(entry["step"], entry["sample_id"])] == entry["loss"], entry
            assert entry["host"] == owner(entry["sample_id"], config.data.batch_size, n), entry
            side = config.hard_examples.image_size
            assert entry["image_shape"] == [side, side * config.data.num_cameras, 3], entry
            assert entry["lang_action"] and entry["token_len"] > 0, entry


def test_global_stats_cover_every_host(training_run):
    assert training_run["result"].returncode == 0, failure_report(training_run["result"])
    config, n = training_run["config"], training_run["num_processes"]

    for start, end in intervals(config):
        document = step_json(training_run, end)
        per_host = interval_observations(training_run, start, end)
        host_stats = [
            IntervalStats(host=host, threshold=None, **interval_stats_oracle(
                sorted({step for _, _, step in obs}), [loss for _, loss, _ in obs], config.hard_examples.high_loss_threshold))
            for host, obs in sorted(per_host.items())
        ]
        merged = expected_merge(per_host, config.hard_examples.buffer_size)
        expected = merge_stats_oracle(host_stats, merged)
        stats = document["stats"]

        assert stats["num_samples"] == (end - start) * config.data.batch_size
        assert stats["num_hosts"] == n
        assert stats["threshold"] == min(e["loss"] for e in document["entries"])
        assert stats == {**expected, "loss_mean": pytest.approx(expected["loss_mean"], rel=1e-12)}
        assert document["bad_hosts"] == {}


def test_round_robin_lets_more_than_one_host_in(training_run):
    assert training_run["result"].returncode == 0, failure_report(training_run["result"])
    config = training_run["config"]

    hosts_per_interval = [{e["host"] for e in step_json(training_run, end)["entries"]}
                          for _, end in intervals(config)]
    assert max(map(len, hosts_per_interval)) > 1, hosts_per_interval
    # In some interval the round-robin logs a different set than the plain global top-K,
    # so the oracle equality above checks the fairness rule and not just a sort.
    plain_top_k = [
        [s for s, _, _ in top_k_oracle(
            [o for obs in interval_observations(training_run, start, end).values() for o in obs],
            config.hard_examples.buffer_size)]
        for start, end in intervals(config)
    ]
    logged = [[e["sample_id"] for e in step_json(training_run, end)["entries"]] for _, end in intervals(config)]
    assert any(set(a) != set(b) for a, b in zip(plain_top_k, logged)), (plain_top_k, logged)


# ---------------------------------------------------------------------------------------
# Faults in the gather: tests/support/gather_script.py, 3 processes x 1 device, one run
# of every round; each round's lines are checked against the oracles.

ROUND_LINE = re.compile(r"\[host (\d+)\] ROUND (\{.*\})")


@pytest.fixture(scope="module")
def gather_rounds():
    """round index -> host -> that host's report; plus the launcher's result."""
    result = launch_local(3, 1, [sys.executable, "-m", "tests.support.gather_script"], timeout=GATHER_TIMEOUT_S)
    rounds: dict[int, dict[int, dict]] = {}
    for line in result.stdout.splitlines():
        match = ROUND_LINE.fullmatch(line)
        if match:
            report = json.loads(match.group(2))
            assert report["host"] == int(match.group(1))
            rounds.setdefault(report["round"], {})[report["host"]] = report
    return {"result": result, "rounds": rounds}


def rounds_named(gather_rounds: dict, name: str) -> list[dict[int, dict]]:
    return [hosts for _, hosts in sorted(gather_rounds["rounds"].items())
            if hosts[0]["name"] == name]


def oracle_candidates(report: dict) -> list[Candidate]:
    """A host's top-K by the oracle, from what it says it fed."""
    return [Candidate(s, loss, step, report["host"])
            for s, loss, step in top_k_oracle([tuple(o) for o in report["fed"]], report["k"])]


def oracle_stats(reports: list[dict], merged: list[Candidate]) -> dict:
    per_host = [
        IntervalStats(host=r["host"], threshold=None, **interval_stats_oracle(
            r["steps"], [loss for _, loss, _ in r["fed"]], gather_script.HIGH_LOSS_THRESHOLD))
        for r in reports
    ]
    expected = merge_stats_oracle(per_host, merged)
    return {**expected, "loss_mean": pytest.approx(expected["loss_mean"], rel=1e-12)}


def as_tuples(entries) -> list[tuple]:
    return [(e["sample_id"], e["loss"], e["step"], e["host"]) if isinstance(e, dict)
            else (e.sample_id, e.loss, e.step, e.host) for e in entries]


def test_every_host_finishes_every_round_and_exits_0(gather_rounds):
    result = gather_rounds["result"]

    assert result.returncode == 0, failure_report(result)  # 124 had the launcher's timeout fired
    assert sorted(gather_rounds["rounds"]) == list(range(len(gather_script.ROUNDS)))
    for index, hosts in gather_rounds["rounds"].items():
        assert sorted(hosts) == [0, 1, 2], f"round {index}"
        assert {r["name"] for r in hosts.values()} == {gather_script.ROUNDS[index]}


def test_clean_rounds_merge_all_hosts_fairly(gather_rounds):
    """The control: with nothing wrong, every host ends with the oracle merge of all three
    hosts, and host 2's much higher losses do not take every slot."""
    clean = rounds_named(gather_rounds, "clean")
    assert len(clean) == gather_script.ROUNDS.count("clean") >= 2
    for hosts in clean:
        reports = [hosts[h] for h in sorted(hosts)]
        merged = merge_oracle([oracle_candidates(r) for r in reports], gather_script.K)

        assert as_tuples(hosts[0]["entries"]) == as_tuples(merged)
        assert {e["host"] for e in hosts[0]["entries"]} == {0, 1, 2}
        for report in reports:
            assert report["bad_hosts"] == {}
            assert report["stats"] == oracle_stats(reports, merged)
            assert as_tuples(report["entries"]) == as_tuples(merged)  # the same result on every host


@pytest.mark.parametrize("name, why", [
    ("garbage", "not a [version, kind, body] frame"),
    ("impostor", "claims host 0"),
], ids=["garbage", "impostor"])
def test_a_bad_payload_from_one_host_is_reported_and_skipped(gather_rounds, name, why):
    (hosts,) = rounds_named(gather_rounds, name)
    others = [hosts[0], hosts[2]]
    merged = merge_oracle([oracle_candidates(r) for r in others], gather_script.K)

    assert set(hosts[0]["bad_hosts"]) == {"1"}
    assert hosts[0]["bad_hosts"]["1"].startswith(f"payload from host 1: {why}"), hosts[0]["bad_hosts"]
    assert as_tuples(hosts[0]["entries"]) == as_tuples(merged)
    for report in hosts.values():  # every host decided the same: that is what keeps them in step
        assert report["bad_hosts"] == hosts[0]["bad_hosts"]
        assert report["stats"] == oracle_stats(others, merged)
        assert report["stats"]["num_hosts"] == 2


def test_the_gather_after_a_bad_payload_works_for_every_host(gather_rounds):
    rounds = gather_rounds["rounds"]
    garbage = next(i for i, hosts in rounds.items() if hosts[0]["name"] == "garbage")
    after = rounds[garbage + 1]

    assert after[0]["name"] == "clean"
    assert sorted(after) == [0, 1, 2]
    reports = [after[h] for h in range(3)]
    merged = merge_oracle([oracle_candidates(r) for r in reports], gather_script.K)
    assert as_tuples(after[0]["entries"]) == as_tuples(merged)
    for report in reports:
        assert report["bad_hosts"] == {}
        assert report["stats"] == oracle_stats(reports, merged)
        assert report["stats"]["num_hosts"] == 3


def test_a_host_with_no_candidates_sends_a_valid_empty_payload(gather_rounds):
    (hosts,) = rounds_named(gather_rounds, "empty")
    assert hosts[1]["fed"] == []
    reports = [hosts[h] for h in range(3)]
    merged = merge_oracle([oracle_candidates(r) for r in reports], gather_script.K)

    assert as_tuples(hosts[0]["entries"]) == as_tuples(merged)
    assert {e["host"] for e in hosts[0]["entries"]} == {0, 2}
    assert len(hosts[0]["entries"]) == gather_script.K
    for report in reports:
        assert report["bad_hosts"] == {}
        assert report["stats"] == oracle_stats(reports, merged)
        assert report["stats"]["num_samples"] == len(hosts[0]["fed"]) + len(hosts[2]["fed"])


def test_candidates_over_the_size_limit_skip_that_host(gather_rounds):
    (hosts,) = rounds_named(gather_rounds, "oversize_candidates")
    limit = hosts[0]["limit"]
    others = [hosts[0], hosts[1]]
    merged = merge_oracle([oracle_candidates(r) for r in others], gather_script.K)

    assert hosts[0]["bad_hosts"] == {"2": f"payload from host 2: larger than the {limit}-byte limit"}
    assert as_tuples(hosts[0]["entries"]) == as_tuples(merged)
    for report in hosts.values():
        assert report["bad_hosts"] == hosts[0]["bad_hosts"]
        assert report["stats"] == oracle_stats(others, merged)


def test_examples_over_the_size_limit_are_reported_and_left_out(gather_rounds):
    """Phase 2: host 2's candidates were merged (they count in the stats and the
    threshold), but its thumbnails are over the limit, so host 0 logs the other winners
    and names host 2."""
    (hosts,) = rounds_named(gather_rounds, "oversize_examples")
    limit = hosts[0]["limit"]
    reports = [hosts[h] for h in range(3)]
    merged = merge_oracle([oracle_candidates(r) for r in reports], gather_script.K)

    assert any(c.host == 2 for c in merged), "the round must give host 2 a winner to send"
    assert hosts[0]["bad_hosts"] == {"2": f"payload from host 2: larger than the {limit}-byte limit"}
    assert as_tuples(hosts[0]["entries"]) == as_tuples([c for c in merged if c.host != 2])
    assert all(e["image_shape"] == [*gather_script.THUMBNAIL, 3] for e in hosts[0]["entries"])
    for report in reports:  # every host decodes phase 2, so every host knows
        assert report["stats"] == oracle_stats(reports, merged)
        assert report["bad_hosts"] == hosts[0]["bad_hosts"]
        assert report["entries"] == hosts[0]["entries"]


# ---------------------------------------------------------------------------------------
# A host killed with SIGKILL mid-training: the launcher must notice, name it, stop the
# rest and leave nothing behind.

KILL_CASES = [
    pytest.param(2, 4, "local-2x4", 1, id="2x4-kill-host-1"),
    pytest.param(4, 2, "local-4x2", 1, id="4x2-kill-host-1", marks=pytest.mark.soak),
    pytest.param(2, 4, "local-2x4", 0, id="2x4-kill-coordinator", marks=pytest.mark.soak),
]


@pytest.mark.parametrize("num_processes, devices, preset, victim", KILL_CASES)
def test_a_host_killed_mid_training_stops_the_pod(tmp_path, num_processes, devices, preset, victim):
    log = tmp_path / "launcher.log"
    command = pod_command(tmp_path, (), "--overwrite", preset=preset, num_train_steps=400, heartbeat_timeout=10)
    launcher = start_local_pod(num_processes, devices, command, log_path=log, timeout=TRAIN_TIMEOUT_S)
    hosts = {}
    try:
        wait_for_output(log, r"^\[host 0\] Step", launcher, timeout=TRAIN_TIMEOUT_S - 30)
        hosts = local_pod_hosts(launcher.pid)
        assert sorted(hosts) == list(range(num_processes)), hosts
        groups = {host.pid for host in hosts.values()}  # each host leads its own session and process group

        os.kill(hosts[victim].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            returncode = launcher.wait(timeout=KILL_DETECTED_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launcher still running {KILL_DETECTED_WITHIN_S}s after host {victim} was killed")
        detected_in = time.monotonic() - killed_at

        output = log.read_text(errors="replace")
        assert returncode == 128 + signal.SIGKILL, (returncode, output[-3000:])
        failures = re.findall(r"^launch\.local: (host \d+) failed \((.*)\)$", output, re.MULTILINE)
        assert failures[:1] == [(f"host {victim}", "killed by SIGKILL")], output[-3000:]
        assert detected_in < KILL_DETECTED_WITHIN_S
        left = processes_in_groups(groups)
        assert left == [], f"processes of the run still alive: {left}"
        assert not [host for host in hosts.values() if host.same_process()]
    finally:
        stop_local_pod(launcher, hosts)
