#!/usr/bin/env bash
# Run the harness on every worker of a Cloud TPU VM pod; flags: launch/tpu_pod.py.
#   bash launch/tpu_pod.sh --tpu NAME --zone ZONE --project PROJECT --preset PRESET -- [harness flags]
#   bash launch/tpu_pod.sh ... --preflight   harness-preflight on every worker instead of training
# Runs from the repository root, so relative paths (--log_dir) are relative to it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 -m launch.tpu_pod "$@"
