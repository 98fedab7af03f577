# The pod image: podharness installed with its `tpu` extra (jax[tpu], which brings
# libtpu), the presets inside the package, run by a non-root user. Build it from the
# repository's root, push it, and hand it to the GKE launcher:
#   docker build -t us-docker.pkg.dev/PROJECT/REPO/podharness:TAG .
#   docker push us-docker.pkg.dev/PROJECT/REPO/podharness:TAG
#   python -m launch.gke --preset v5litepod-16 --name run1 --image us-docker.pkg.dev/PROJECT/REPO/podharness:TAG ...
# The entry point is harness-train: `docker run --rm IMAGE` lists the presets,
# `docker run --rm IMAGE --config smoke --no_wandb` trains the smoke preset on the CPU.
#
# The base is pinned by tag. A tag can be rebuilt (Debian security updates); to pin its
# exact bytes, look up the digest and add it to the FROM line:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm   (the "Digest:" line)
#   FROM python:3.11.14-slim-bookworm@sha256:<digest>
# No image is built on the development machines; tests/test_dockerfile.py checks this file.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN useradd --create-home --uid 1000 harness

# What setup.cfg builds the package from (.dockerignore lets in nothing else); configs/
# becomes the package data harness.presets.
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY harness/ harness/
COPY launch/ launch/
COPY configs/ configs/
RUN pip install '.[tpu]' && rm -rf /src

# Runs from the installed package, not from a source tree.
USER harness
WORKDIR /home/harness
ENTRYPOINT ["harness-train"]
CMD ["--list_configs"]
