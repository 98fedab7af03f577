"""`python -m harness.train`: the same entry point as `harness-train`."""

import sys

from harness.train.cli import main

sys.exit(main())
