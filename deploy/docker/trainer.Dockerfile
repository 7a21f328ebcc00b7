# syntax=docker/dockerfile:1
#
# The trainer's production image: the trainer service (Node) and its Python worker (torch, transformers,
# peft, ...) in a virtual environment built from services/trainer/worker/requirements.txt, for NVIDIA L4 nodes.
# Build from the repository root:
#
#   docker build -f deploy/docker/trainer.Dockerfile -t ragtune/trainer:0.1.0 .
#   # + bitsandbytes' CUDA kernels as an optional backend:
#   docker build -f deploy/docker/trainer.Dockerfile --build-arg WITH_BITSANDBYTES=true -t ragtune/trainer:0.1.0 .
#   # CPU variant (dev clusters without GPUs; the worker's builtin NF4 QLoRA runs on CPU):
#   docker build -f deploy/docker/trainer.Dockerfile --build-arg BASE_IMAGE=ubuntu:22.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg TORCH_CUDA= -t ragtune/trainer:0.1.0-cpu .
#
# CUDA: torch comes from PyTorch's CUDA 12.8 index (TORCH_INDEX_URL, cu128), never from PyPI's default wheel (a
# CUDA 13 build that needs a newer driver). Its wheels bring their own CUDA runtime, cuBLAS and cuDNN (nvidia-*
# packages), so the base is CUDA's slim `base` image of the same version: it only sets the NVIDIA container-runtime
# variables (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES) and holds no CUDA libraries of its own. The build
# fails unless torch.version.cuda is TORCH_CUDA. The node's NVIDIA driver must support CUDA 12.8: driver >= 570
# (deploy/README.md). To build for another CUDA, change the three together (BASE_IMAGE, TORCH_INDEX_URL, TORCH_CUDA).
#
# Test-only packages (pytest, ruff and their dependencies) are pinned in requirements.txt for the development
# environment and left out here (TEST_ONLY_PACKAGES); the build fails if one is importable. The ignore file is
# trainer.Dockerfile.dockerignore.

# Node 22 LTS (Node 20 is past its end of life; @connectrpc/connect-node 2.2 and @nats-io/nuid declare node >= 22).
ARG NODE_VERSION=22
ARG NODE_IMAGE=node:${NODE_VERSION}-bookworm-slim
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04

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
 && node tools/scripts/production-workspaces.mjs @ragtune/trainer-service > /tmp/workspaces \
 && while read -r name dir; do cp -r --parents "${dir}/dist" /out/; done < /tmp/workspaces

# ---- prod-deps: production node_modules of the trainer service (pure JavaScript, no native addons, so
# they run unchanged on the Ubuntu base below); no devDependencies, so no test-only package.
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY --from=source /manifests/ ./
COPY --from=source /src/tools/scripts/production-workspaces.mjs /opt/ragtune/production-workspaces.mjs
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --omit=dev --workspace @ragtune/trainer-service \
 && node /opt/ragtune/production-workspaces.mjs @ragtune/trainer-service | cut -d " " -f 1 > /tmp/needed \
 && for link in node_modules/@ragtune/*; do \
      grep -qx "@ragtune/$(basename "${link}")" /tmp/needed || rm -rf "${link}"; \
    done \
 && for pkg in @ragtune/testing vitest tokenizers; do \
      if [ -e "node_modules/${pkg}" ]; then echo "test-only package ${pkg} in the production install" >&2; exit 1; fi; \
    done

FROM ${NODE_IMAGE} AS node

# ---- runtime
FROM ${BASE_IMAGE} AS runtime
ARG PYTHON_VERSION=3.11
# The PyTorch wheel index torch is installed from, and the CUDA version its build must report (empty: a CPU build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_CUDA=12.8
# requirements.txt pins of the test tools and what only they need; not installed in this image.
ARG TEST_ONLY_PACKAGES="pytest ruff iniconfig pluggy"
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

# The worker's virtual environment: torch from TORCH_INDEX_URL first (the requirements' unlabelled pin torch==X then
# matches the installed X+cu128 build, so pip keeps it), then the runtime requirements without the test tools.
COPY services/trainer/worker/requirements.txt /opt/ragtune/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    "python${PYTHON_VERSION}" -m venv /opt/venv; \
    /opt/venv/bin/pip install --upgrade pip; \
    /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "$(grep -E '^torch==' /opt/ragtune/requirements.txt)"; \
    exclude="$(echo ${TEST_ONLY_PACKAGES} | sed 's/ /|/g')"; \
    grep -v -i -E "^(${exclude})==" /opt/ragtune/requirements.txt > /opt/ragtune/requirements-runtime.txt; \
    /opt/venv/bin/pip install -r /opt/ragtune/requirements-runtime.txt; \
    if [ "${WITH_BITSANDBYTES}" = "true" ]; then \
      /opt/venv/bin/pip install "bitsandbytes==${BITSANDBYTES_VERSION}"; \
    fi; \
    /opt/venv/bin/python -c "import sys, torch; want = sys.argv[1] or None; got = torch.version.cuda; \
sys.exit(0 if got == want else f'torch {torch.__version__} is built for CUDA {got}, this image is for CUDA {want} (TORCH_CUDA): change BASE_IMAGE, TORCH_INDEX_URL and TORCH_CUDA together')" "${TORCH_CUDA}"; \
    for pkg in ${TEST_ONLY_PACKAGES}; do \
      if /opt/venv/bin/pip show -q "${pkg}" 2>/dev/null; then echo "test-only package ${pkg} in the production environment" >&2; exit 1; fi; \
    done

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
