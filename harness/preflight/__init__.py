"""`harness-preflight`: is the pod ready? Every check on every host, one verdict.

    python -m launch.local --num_processes 2 --devices_per_process 4 -- \\
        harness-preflight --config local-2x4
    bash launch/tpu_pod.sh --tpu NAME --zone ZONE --project PROJECT --preset v4-32 --preflight

Each host runs the same checks (rendezvous, consistency gate, devices, interconnect,
storage, a short dry run of the training loop); the results travel to process 0 as
bounded msgpack (wire.py), which prints one table check x host, writes
`<run_dir>/preflight.json` (schema.py) and `<run_dir>/preflight.md`, and every host
exits 0 only when no cell is FAIL. runner.py says in which order, and why.
"""
