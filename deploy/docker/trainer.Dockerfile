# syntax=docker/dockerfile:1
#
# The trainer's production image: the trainer service (Node) and its Python worker (torch, transformers,
# peft, ...) in a virtual environment built from services/trainer/worker/requirements.txt, on a CUDA base
# for NVIDIA L4 nodes. Build from the repository root:
#
#   docker build -f deploy/docker/trainer.Dockerfile -t ragtune/trainer:0.1.0 .
#   # + bitsandbytes' CUDA kernels as an optional backend:
#   docker build -f deploy/docker/trainer.Dockerfile --build-arg WITH_BITSANDBYTES=true -t ragtune/trainer:0.1.0 .
#   # CPU variant (dev clusters without GPUs; the worker's builtin NF4 QLoRA runs on CPU):
#   docker build -f deploy/docker/trainer.Dockerfile --build-arg BASE_IMAGE=ubuntu:22.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t ragtune/trainer:0.1.0-cpu .
#
# torch is pinned in requirements.txt without a local version tag, so the same pin resolves to the wheel
# of whichever index is used: PyPI's Linux x86_64 torch wheel is the CUDA build (it brings its own CUDA
# runtime and cuDNN as nvidia-* wheels; the host needs an NVIDIA driver recent enough for that CUDA
# version), TORCH_INDEX_URL=https://download.pytorch.org/whl/cuXXX picks a specific CUDA build, .../cpu
# the CPU build. The CUDA base image supplies the NVIDIA container-runtime settings (NVIDIA_VISIBLE_DEVICES,
# NVIDIA_DRIVER_CAPABILITIES) and system CUDA libraries for extensions that look for them; a `-base-`
# variant of the same tag makes a smaller image. The ignore file is trainer.Dockerfile.dockerignore.

ARG NODE_VERSION=20
ARG NODE_IMAGE=node:${NODE_VERSION}-bookworm-slim
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# ---- source: the repository, and its package manifests alone (cached npm layers).
FROM ${NODE_IMAGE} AS source
WORKDIR /src
COPY . .
RUN mkdir /manifests \
 && cp package.json package-lock.json /manifests/ \
 && find libs services tools -name package.json -not -path "*/node_modules/*" -exec cp --parents {} /manifests/ \;

# ---- build: the trainer service and the libraries it depends on (dist/ of each).
FROM ${NODE_IMAGE} AS build
ENV NX_DAEMON=false NX_NO_CLOUD=true NX_TUI=false CI=true
WORKDIR /app
COPY --from=source /manifests/ ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --include-workspace-root --workspace @ragtune/trainer-service
COPY --from=source /src/ ./
RUN npx nx run @ragtune/trainer-service:build --outputStyle=static \
 && mkdir /out \
 && for d in libs/*/dist services/trainer/dist; do cp -r --parents "$d" /out/; done

# ---- prod-deps: production node_modules of the trainer service (pure JavaScript, no native addons, so
# they run unchanged on the Ubuntu base below).
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY --from=source /manifests/ ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --omit=dev --workspace @ragtune/trainer-service

FROM ${NODE_IMAGE} AS node

# ---- runtime
FROM ${BASE_IMAGE} AS runtime
ARG PYTHON_VERSION=3.11
# Empty: torch from PyPI (CUDA build on Linux x86_64). Otherwise a PyTorch wheel index (cpu, cu128, ...).
ARG TORCH_INDEX_URL=
ARG WITH_BITSANDBYTES=false
ARG BITSANDBYTES_VERSION=0.50.2
ENV DEBIAN_FRONTEND=noninteractive

# Python 3.11 (the version the worker's requirements are frozen on) from the deadsnakes PPA, as Ubuntu
# 22.04 ships 3.10; tini as PID 1 (reaps the worker's children, forwards SIGTERM to node only).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common tini \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*

# Node for the trainer service: the official binary (built for glibc >= 2.28).
COPY --from=node /usr/local/bin/node /usr/local/bin/node

# The worker's virtual environment.
COPY services/trainer/worker/requirements.txt /opt/ragtune/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    "python${PYTHON_VERSION}" -m venv /opt/venv; \
    /opt/venv/bin/pip install --upgrade pip; \
    if [ -n "${TORCH_INDEX_URL}" ]; then \
      /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "$(grep -E '^torch==' /opt/ragtune/requirements.txt)"; \
    fi; \
    /opt/venv/bin/pip install -r /opt/ragtune/requirements.txt; \
    if [ "${WITH_BITSANDBYTES}" = "true" ]; then \
      /opt/venv/bin/pip install "bitsandbytes==${BITSANDBYTES_VERSION}"; \
    fi

WORKDIR /app
COPY --from=prod-deps /app/ ./
COPY --from=build /out/ ./
COPY services/trainer/worker/pyproject.toml services/trainer/worker/requirements.txt ./services/trainer/worker/
# ragtune_worker/ holds hyperparameters.json, the hyperparameter contract the service (dist/) reads as well.
COPY services/trainer/worker/ragtune_worker ./services/trainer/worker/ragtune_worker
# Byte-compile now (the root file system is read-only at run time) and check the environment imports.
RUN /opt/venv/bin/python -m compileall -q services/trainer/worker/ragtune_worker \
 && cd services/trainer/worker \
 && /opt/venv/bin/python -c "import torch, transformers, peft, safetensors, gguf, ragtune_worker; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin ragtune \
 && mkdir -p /var/lib/ragtune/work /models /datasets \
 && chown 1000:1000 /var/lib/ragtune/work

ENV NODE_ENV=production \
    RPC_HOST=0.0.0.0 \
    RPC_PORT=8080 \
    TRAINER_PYTHON=/opt/venv/bin/python \
    TRAINER_WORKER_DIR=/app/services/trainer/worker \
    TRAINER_WORK_DIR=/var/lib/ragtune/work \
    TRAINER_MODEL_ROOT=/models \
    TRAINER_DATA_ROOT=/datasets \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HOME=/tmp/cache/huggingface \
    TRITON_CACHE_DIR=/tmp/cache/triton

USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "services/trainer/dist/main.js"]
