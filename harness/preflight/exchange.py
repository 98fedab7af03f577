"""Every host's report to every host, through the byte allgather of
harness/runtime/collectives.py and wire.py's decoder. A report that is too large or does
not decode is kept as the reason why, for its host's cells, and never stops the others."""

from __future__ import annotations

from harness.preflight.results import HostReport
from harness.preflight.wire import MAX_REPORT_BYTES, decode_report, encode_report
from harness.runtime.collectives import allgather_bytes
from harness.runtime.messages import MessageError


def exchange(report: HostReport) -> dict[int, HostReport | str]:
    """Host -> its report, or why it could not be read. A collective: every host calls it."""
    blobs, _ = allgather_bytes(encode_report(report), max_payload_bytes=MAX_REPORT_BYTES)
    received: dict[int, HostReport | str] = {}
    for host, blob in enumerate(blobs):
        source = f"report from host {host}"
        if blob is None:
            received[host] = f"{source}: larger than the {MAX_REPORT_BYTES}-byte limit"
            continue
        try:
            decoded = decode_report(blob, source=source)
        except MessageError as err:
            received[host] = str(err)
            continue
        received[host] = decoded if decoded.host == host else f"{source}: claims to be host {decoded.host}"
    return received
