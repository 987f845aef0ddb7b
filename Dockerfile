# swinxseg: CT segmentation service image (CUDA).
#
#   docker build -t swinxseg:0.1.0 .
#   docker run --gpus all -p 8000:8000 swinxseg:0.1.0                 # HTTP service on 0.0.0.0:8000
#   docker run --gpus all -v "$PWD/inputs:/workspace/inputs" -v "$PWD/outputs:/workspace/outputs" \
#       swinxseg:0.1.0 batch                                           # every CT of inputs/ -> outputs/
#   docker run ... swinxseg:0.1.0 /bin/bash -c "sh predict.sh"        # the FLARE challenge contract
#
# The CUDA runtime + cuDNN base serves onnxruntime-gpu (which loads the system CUDA/cuDNN);
# the CUDA torch wheel brings its own CUDA libraries. Both need CUDA 12 and cuDNN 9.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# MUST equal the torch== and onnxruntime== pins of requirements.lock (tests/api/test_deploy_files.py
# checks it). torch comes from the official PyTorch CUDA index for the base image's CUDA 12.8;
# onnxruntime-gpu replaces the CPU onnxruntime of the lock (same version, same Python API).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG ONNXRUNTIME_VERSION=1.32.0
# Same pin as requirements-dev.lock; needed to install the project in editable mode without isolation.
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
    SWINXSEG_MODEL_DIR=/app/weights/demo

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu's python3.12 follows the security updates of the base tag; pinning its exact Debian
# revision would break the build whenever the archive moves on, hence DL3008 is ignored here.
# The base image's uid 1000 user ("ubuntu") makes way for ours: uid 1000 can usually write to the
# host folders mounted on /workspace (otherwise run with --user "$(id -u):$(id -g)").
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv "$VIRTUAL_ENV" \
    && { userdel --remove ubuntu 2>/dev/null || true; } \
    && useradd --uid "$APP_UID" --user-group --create-home --shell /usr/sbin/nologin swinxseg

WORKDIR /app

# Dependencies first (their layer survives code changes): everything exactly as locked, except
# torch (CUDA build from the PyTorch index) and onnxruntime (its GPU build).
COPY requirements.lock ./
RUN grep -vE '^(torch|onnxruntime)==' requirements.lock > /tmp/requirements-image.txt \
    && pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements-image.txt \
        "onnxruntime-gpu==${ONNXRUNTIME_VERSION}" "setuptools==${SETUPTOOLS_VERSION}" \
    && rm /tmp/requirements-image.txt

# Editable install: the code stays in /app, so the default model folder (weights/demo next to the
# package) resolves to /app/weights/demo, and the `swinxseg` console script is on the PATH.
COPY pyproject.toml README.md ./
COPY service/ service/
COPY model_export/ model_export/
COPY weights/ weights/
COPY deploy/entrypoint.sh deploy/predict.sh deploy/healthcheck.py deploy/
RUN pip install --no-deps --no-build-isolation -e . \
    && mkdir -p /workspace/inputs /workspace/outputs \
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
