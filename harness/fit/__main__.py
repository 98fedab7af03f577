"""`python -m harness.fit`: the same entry point as `harness-fit`."""

import sys

from harness.fit.cli import main

sys.exit(main())
