"""`python -m launch.gke`: see launch/gke/cli.py."""

import sys

from launch.gke.cli import main

sys.exit(main())
