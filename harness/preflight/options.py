"""Preflight's own options, beside every harness-train flag (harness/preflight/cli.py)."""

from __future__ import annotations

import dataclasses

from harness.errors import UsageError

CONSISTENCY, DEVICES, HOST_SPEED, INTERCONNECT = "consistency", "devices", "host_speed", "interconnect"
STORAGE, DRY_RUN = "storage", "dry_run"
CHECKS = (CONSISTENCY, DEVICES, HOST_SPEED, INTERCONNECT, STORAGE, DRY_RUN)  # rendezvous always runs
DEFAULT_SIZES = (16 << 10, 256 << 10, 4 << 20)  # bytes per device and collective
DEFAULT_THROUGHPUT_MAX_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class PreflightOptions:
    checks: tuple[str, ...] = CHECKS
    interconnect_sizes: tuple[int, ...] = DEFAULT_SIZES
    interconnect_repeats: int = 5
    straggler_factor: float = 3.0
    slow_host_factor: float = 1.5
    throughput_max_bytes: int = DEFAULT_THROUGHPUT_MAX_BYTES
    dry_run_steps: int = 4
    check_timeout: float = 300.0
    testing_fault: str = ""
    testing_fault_host: int = -1
    preset: str | None = None  # the --config the run's settings came from, for the report

    def runs(self, check: str) -> bool:
        return check in self.checks


def parse_checks(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CHECKS]
    if unknown or not names:
        raise UsageError(f"--checks takes a comma-separated subset of {','.join(CHECKS)}, got {text!r}")
    return tuple(name for name in CHECKS if name in names)


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        sizes = ()
    if not sizes or sizes[0] < 4:
        raise UsageError(f"--interconnect_sizes takes byte counts >= 4 separated by commas, got {text!r}")
    return sizes


def validate_options(options: PreflightOptions) -> None:
    if options.interconnect_repeats < 1:
        raise UsageError(f"--interconnect_repeats must be positive, got {options.interconnect_repeats}")
    if not options.straggler_factor > 1.0:
        raise UsageError(f"--straggler_factor must be above 1, got {options.straggler_factor}")
    if not options.slow_host_factor > 1.0:
        raise UsageError(f"--slow_host_factor must be above 1, got {options.slow_host_factor}")
    if options.throughput_max_bytes < 1:
        raise UsageError(f"--throughput_max_bytes must be positive, got {options.throughput_max_bytes}")
    if options.dry_run_steps < 1:
        raise UsageError(f"--dry_run_steps must be positive, got {options.dry_run_steps}")
    if not options.check_timeout > 0:
        raise UsageError(f"--check_timeout must be positive, got {options.check_timeout}")
