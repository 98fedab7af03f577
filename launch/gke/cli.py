"""`python -m launch.gke`: print the JobSet that runs a TPU preset on GKE.

    python -m launch.gke --preset v5litepod-16 --name run1 --image IMAGE \\
        -- --checkpoint_dir gs://BUCKET/run1 > jobset.yaml

Everything after `--` goes to the harness (`python -m harness.train --config PRESET
--resume ...`), in the image built from the repository's Dockerfile (`--help` says how).
Refused with exit 2, before anything is printed: a preset without a TPU topology, a
checkpoint directory a restarted pod cannot read back (not gs://, or the presets'
YOUR_BUCKET placeholder), a multi-VM slice whose preset does not start `jax.distributed`
from the TPU metadata, and a name Kubernetes would reject.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

from harness.config import load_preset
from harness.errors import UsageError, report_error
from launch.gke.manifest import RESTARTABLE_EXIT_CODES, Workload, jobset
from launch.gke.tpus import GkeSlice, slice_for

PROG = "launch.gke"
IMAGE_BUILD = """the image: the Dockerfile at the repository's root, built and pushed from there:
  docker build -t us-docker.pkg.dev/PROJECT/REPO/podharness:TAG .
  docker push us-docker.pkg.dev/PROJECT/REPO/podharness:TAG"""
# DNS-1035 label; JobSet adds "-slice-<i>-<j>" and a hash to pod names, so keep it short (xpk: 40).
NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME = 40


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value given to `--flag V` or `--flag=V` in a harness command line."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def check(preset: str, name: str, harness_flags: Sequence[str], tpu: GkeSlice) -> None:
    """UsageError for a workload that could not run, or not resume, on GKE."""
    config = load_preset(preset)
    if not NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise UsageError(f"--name {name!r}: lowercase letters, digits and '-', starting with a letter, "
                         f"at most {MAX_NAME} characters")
    checkpoint_dir = flag_value(harness_flags, "--checkpoint_dir") or config.checkpoint.dir
    if not checkpoint_dir.startswith("gs://") or "YOUR_BUCKET" in checkpoint_dir:
        raise UsageError(f"checkpoint dir {checkpoint_dir!r}: a restarted pod resumes only from a bucket; "
                         f"pass -- --checkpoint_dir gs://BUCKET/PATH")
    distributed = flag_value(harness_flags, "--distributed") or config.distributed.mode
    if tpu.vms * tpu.num_slices > 1 and distributed != "pod":
        raise UsageError(f"{tpu.vms * tpu.num_slices} pods need jax.distributed from the TPU metadata: "
                         f"distributed = {distributed!r} in the preset; pass -- --distributed pod")


def summary(preset: str, tpu: GkeSlice, max_restarts: int) -> str:
    codes = f"{RESTARTABLE_EXIT_CODES[0]}, {RESTARTABLE_EXIT_CODES[1]}-{RESTARTABLE_EXIT_CODES[-1]}"
    return (f"{PROG}: {preset} ({tpu.product}): {tpu.num_slices} slice(s) x {tpu.vms} VM(s) with "
            f"{tpu.chips_per_vm} chips each; node pools of {tpu.machine_type}, {tpu.accelerator} "
            f"{tpu.topology}; restarts on exit codes {codes} (at most {max_restarts} times)")


def render(manifest: dict, output_format: str) -> str:
    if output_format == "json":
        return json.dumps(manifest, indent=2) + "\n"
    import yaml  # PyYAML (a wandb dependency); `--format json` needs nothing

    return yaml.safe_dump(manifest, sort_keys=False, width=120, default_flow_style=None)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.splitlines()[0],
                                     epilog=IMAGE_BUILD, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="%(prog)s --preset PRESET --name NAME --image IMAGE [options] "
                                           "[-- HARNESS_FLAGS...]")
    parser.add_argument("--preset", required=True, help="a TPU preset (see harness-train --list_configs), e.g. v5litepod-16")
    parser.add_argument("--name", required=True, help="the JobSet's name")
    parser.add_argument("--image", required=True, help="the pod image (built from the Dockerfile, see below; "
                                                       "python -m harness.train runs in it)")
    parser.add_argument("--num_slices", type=int, help="slices (JobSet replicas; default: the preset's)")
    parser.add_argument("--max_restarts", type=int, default=3, help="JobSet restarts on restartable exits (3)")
    parser.add_argument("--termination_grace_s", type=int, default=60,
                        help="seconds between SIGTERM and SIGKILL: the agreed-step save must fit (60)")
    parser.add_argument("--wandb_secret", help="Kubernetes Secret holding WANDB_API_KEY (key WANDB_API_KEY)")
    parser.add_argument("--service_account", help="Kubernetes service account (e.g. for Workload Identity)")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    if args.max_restarts < 0 or args.termination_grace_s < 1 or (args.num_slices is not None and args.num_slices < 1):
        parser.error("--max_restarts must be >= 0, --termination_grace_s and --num_slices >= 1")
    return args, argv[split + 1:]


def main(argv: Sequence[str] | None = None) -> int:
    args, harness_flags = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_preset(args.preset)
        if not config.tpu.topology:
            raise UsageError(f"preset {args.preset!r} has no TPU topology; use a TPU preset "
                             f"(one with `topology = ...`, e.g. v5litepod-16)")
        num_slices = args.num_slices or config.mesh.num_slices
        tpu = slice_for(config.tpu.topology, config.tpu.chip_config, num_slices)
        check(args.preset, args.name, harness_flags, tpu)
    except UsageError as error:
        return report_error(PROG, error)
    slices = ["--num_slices", str(num_slices)] if num_slices > 1 else []
    workload = Workload(name=args.name, image=args.image,
                        harness_args=("--config", args.preset, "--resume", *slices, *harness_flags),
                        max_restarts=args.max_restarts, termination_grace_s=args.termination_grace_s,
                        wandb_secret=args.wandb_secret, service_account=args.service_account)
    print(summary(args.preset, tpu, args.max_restarts), file=sys.stderr)
    sys.stdout.write(render(jobset(workload, tpu), args.format))
    return 0
