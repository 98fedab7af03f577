"""Numbers for people: SI rates, durations, prices (binary sizes: harness.runtime.memory.format_bytes)."""

from __future__ import annotations

GIB = 1 << 30


def format_si(value: float, unit: str) -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min" if seconds < 7200 else f"{seconds / 3600:.3g} h"


def format_usd(value: float) -> str:
    """Dollars to the cent, or to 3 significant digits below a dollar."""
    return f"${value:,.2f}" if value >= 1 else f"${value:.3g}"
