"""A launch's run id: sortable by start time and new for every launch. The launchers give
it to every host as HARNESS_RUN_ID (preflight's roll call turns away a host of another
launch by it); harness-preflight makes one the same way where no launcher did."""

from __future__ import annotations

import time
import uuid


def new_run_id(prefix: str = "") -> str:
    """`PREFIX` + local time to the second + 6 random hex digits: `20261207-141503-3fa2c1`."""
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
