# syntax=docker/dockerfile:1
# The platform's own image: the project (editable, so it finds params.yaml and infra/ as in a
# checkout), installed from the lock, plus the Prefect workers' integrations. One image runs
# the Prefect process worker, Kubernetes flow-run jobs, the Ray head and workers, and the
# training RayJob, so every Ray node has the same code and versions.
# Build from the repository root:
#   docker build -f infra/compose/wallwm.Dockerfile -t wallwm:0.1.0 .
# TORCH_INDEX_URL picks the torch build: the CPU wheels by default; for GPU nodes pass the
# CUDA index of your driver, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# libosmesa6: MuJoCo software rendering for the sim source; git: DVC and run lineage.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libosmesa6 git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --create-home --home-dir /home/wallwm wallwm \
    && mkdir -p /var/lib/wallwm && chown 1000:1000 /var/lib/wallwm

WORKDIR /opt/wallwm
COPY --chown=1000:1000 . .
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        -c constraints.txt -e . "prefect-kubernetes==0.8.0" "prefect-ray==0.6.0" \
    && /opt/venv/bin/pip check

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WALLWM_HOME=/var/lib/wallwm \
    MUJOCO_GL=osmesa \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    RAY_USAGE_STATS_ENABLED=0
USER 1000
