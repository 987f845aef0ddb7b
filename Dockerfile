# swinxseg: CT segmentation service image (CUDA).
#
#   docker build -t swinxseg:0.1.0 .
#   docker run --gpus all -p 8000:8000 swinxseg:0.1.0                 # HTTP service on 0.0.0.0:8000
#   docker run --gpus all -v "$PWD/inputs:/workspace/inputs" -v "$PWD/outputs:/workspace/outputs" \
#       swinxseg:0.1.0 batch                                           # every CT of inputs/ -> outputs/
#   docker run ... swinxseg:0.1.0 /bin/bash -c "sh predict.sh"        # the FLARE challenge contract
#
# CUDA 13 and cuDNN 9 come as pip packages with torch's Linux wheel from the package index (and
# onnxruntime-gpu's extras), so the base needs no CUDA of its own: only the host's NVIDIA driver
# (>= 580 for CUDA 13), which the NVIDIA container toolkit mounts (see NVIDIA_* below).
#
# One Dockerfile, two variants, chosen by build arguments (defaults: the CUDA image we ship):
#   CUDA (shipped): BASE_IMAGE=ubuntu:24.04 PYTHON_VERSION=3.12 ONNXRUNTIME_REQUIREMENT=onnxruntime-gpu[...]
#   CPU (built and run by `make image-test`): a Debian bookworm base made with debootstrap,
#     PYTHON_VERSION=3.11, ONNXRUNTIME_REQUIREMENT=onnxruntime==<lock>, and PIP_FIND_LINKS pointing
#     at a mounted folder that holds torch's CPU wheel (see deploy/image-test.sh).
ARG BASE_IMAGE=ubuntu:24.04
FROM ${BASE_IMAGE}

# TORCH_VERSION MUST equal requirements.lock's torch pin (tests/api/test_deploy_files.py checks it).
# onnxruntime-gpu replaces the lock's CPU onnxruntime (same Python API); its GPU build is released
# after the CPU one and may lag its version (1.31.1 while the CPU build is at 1.32.0).
# tests/deploy/test_image_dependencies.py resolves these pins for PYTHON_VERSION on Linux x86_64.
ARG PYTHON_VERSION=3.12
ARG TORCH_VERSION=2.13.0
ARG ONNXRUNTIME_REQUIREMENT="onnxruntime-gpu[cuda,cudnn]==1.31.1"
# Unset unless given: a local wheel folder and a CA bundle for pip (the CPU test build only).
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG SETUPTOOLS_VERSION=84.2.1
ARG APP_UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib \
    SWINXSEG_HOST=0.0.0.0 \
    SWINXSEG_PORT=8000 \
    SWINXSEG_LOG_JSON=true \
    SWINXSEG_GPU_MEM_CAP_MB=4096 \
    SWINXSEG_MODEL_DIR=/app/weights/demo \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu's python3.12 follows the security updates of the base tag; pinning its exact Debian
# revision would break the build whenever the archive moves on, hence DL3008 is ignored here.
# The base image's uid 1000 user ("ubuntu") makes way for ours: uid 1000 can usually write to the
# host folders mounted on /workspace (otherwise run with --user "$(id -u):$(id -g)").
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
        ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && "python${PYTHON_VERSION}" -m venv "$VIRTUAL_ENV" \
    && { userdel --remove ubuntu 2>/dev/null || true; } \
    && useradd --uid "$APP_UID" --user-group --create-home --shell /usr/sbin/nologin swinxseg

WORKDIR /app

# Dependencies first (their layer survives code changes): everything exactly as locked, except
# torch and onnxruntime (deploy/image-requirements.sh says how, and why).
COPY requirements.lock ./
COPY deploy/image-requirements.sh deploy/
RUN sh deploy/image-requirements.sh requirements.lock "$TORCH_VERSION" "$ONNXRUNTIME_REQUIREMENT" \
        "$SETUPTOOLS_VERSION" > /tmp/requirements-image.txt \
    && pip install -r /tmp/requirements-image.txt \
    && rm /tmp/requirements-image.txt

# Editable install: the code stays in /app, so the default model folder (weights/demo next to the
# package) resolves to /app/weights/demo, and the `swinxseg` console script is on the PATH.
COPY pyproject.toml README.md ./
COPY service/ service/
COPY model_export/ model_export/
COPY weights/ weights/
COPY deploy/entrypoint.sh deploy/predict.sh deploy/healthcheck.py deploy/
RUN pip install --no-deps --no-build-isolation -e . \
    && mkdir -p /workspace/inputs /workspace/outputs /workspace/jobs \
    && cp deploy/predict.sh /workspace/predict.sh \
    && chmod 0755 deploy/entrypoint.sh deploy/predict.sh /workspace/predict.sh \
    && chown -R "$APP_UID:$APP_UID" /workspace

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER ${APP_UID}:${APP_UID}
# `sh predict.sh` (FLARE) runs from here.
WORKDIR /workspace

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]

ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["serve"]
