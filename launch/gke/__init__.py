"""JobSet manifests that run the harness on GKE TPU node pools, the way xpk's do.

    python -m launch.gke --preset v5litepod-16 --name run1 --image IMAGE \\
        -- --checkpoint_dir gs://BUCKET/run1 > jobset.yaml
    kubectl apply -f jobset.yaml

tpus.py maps a preset's TPU topology to GKE's node selectors and chips per VM;
manifest.py builds the JobSet (replicas = slices, parallelism = completions = VMs per
slice, restart on the harness's restartable exit codes); cli.py is the command line.
"""
