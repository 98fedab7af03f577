"""How one hard-example interval reads: the seed-style console block and the JSON file
`<run_dir>/hard_examples/step_<N>.json` (entries without pixels)."""

from __future__ import annotations

import dataclasses

from harness.hard_examples.gather import GatherResult

PRINTED_ENTRIES = 5


def format_block(result: GatherResult, *, printed: int = PRINTED_ENTRIES) -> list[str]:
    """The console block, seed style, with the host of each entry."""
    stats = result.stats
    threshold = "n/a" if stats.threshold is None else f"{stats.threshold:.4f}"
    lines = [
        f"  Hard examples: {len(result.examples)} entries, threshold={threshold}, "
        f"total_samples={stats.num_samples}"
    ]
    for rank, entry in enumerate(result.examples[:printed], start=1):
        lines.append(
            f"    #{rank}: loss={entry.loss:.4f}, step={entry.step}, host={entry.host}, "
            f"lang_action={entry.lang_action} (len={entry.token_len})..."
        )
    if len(result.examples) > printed:
        lines.append(f"    ... {len(result.examples) - printed} more")
    for host, why in sorted(result.bad_hosts.items()):
        lines.append(f"  WARNING: {'skipped host ' + str(host) if host >= 0 else 'no entries'}: {why}")
    return lines


def result_to_json(result: GatherResult) -> dict:
    """Everything about an interval except pixels (the image shape stays)."""
    return {
        "step": result.step,
        "stats": dataclasses.asdict(result.stats),
        "bad_hosts": {str(h): why for h, why in sorted(result.bad_hosts.items())},
        "entries": [
            {
                "rank": rank, "sample_id": e.sample_id, "loss": e.loss, "step": e.step,
                "host": e.host, "lang_action": e.lang_action, "prompt": e.prompt,
                "token_len": e.token_len, "image_shape": list(e.image.shape),
            }
            for rank, e in enumerate(result.examples, start=1)
        ],
    }
