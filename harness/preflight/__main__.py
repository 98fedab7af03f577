"""`python -m harness.preflight`: the same entry point as `harness-preflight`."""

import sys

from harness.preflight.cli import main

sys.exit(main())
