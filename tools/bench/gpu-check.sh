#!/usr/bin/env bash
# GPU check of the trainer worker, for a machine with one NVIDIA GPU (an L4 node, a workstation):
#   1. installs the CUDA torch build the trainer image uses (PyTorch's cu128 index, the version pinned in
#      services/trainer/worker/requirements.txt) and bitsandbytes into the worker's environment
#      (services/trainer/worker/.venv, made by `npm run setup` / tools/setup/setup.mjs);
#   2. runs the worker's tests on CUDA, the builtin NF4 against bitsandbytes' kernels included
#      (tests/test_nf4_cuda.py: same dequantized weights, loss within 2 %), and fails if those are skipped;
#   3. measures peak GPU memory and tokens/s of QLoRA on a randomly initialised Mistral-7B-shaped model
#      (seq 1024, micro batch 4, gradient checkpointing) next to the L4 memory budget the README computes.
# Takes a few minutes on one L4 (most of it the pip download). On a machine without a usable GPU it stops
# before installing anything, with exit code 2 and what is missing.
#
#   bash tools/bench/gpu-check.sh            # from the repository root
#   GPU_CHECK_STEPS=3 bash tools/bench/gpu-check.sh
#
# Afterwards the environment holds CUDA torch: `npm run setup` does not downgrade it (same pin); remove
# services/trainer/worker/.venv and run setup again for the CPU build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORKER="${ROOT}/services/trainer/worker"
PYTHON="${WORKER}/.venv/bin/python"
# The trainer image's CUDA torch (deploy/docker/trainer.Dockerfile: TORCH_INDEX_URL, TORCH_CUDA).
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
TORCH_CUDA="${TORCH_CUDA:-12.8}"
# Kept equal to BITSANDBYTES_VERSION in deploy/docker/trainer.Dockerfile (tools/test/deploy.test.ts checks).
BITSANDBYTES_VERSION=0.50.2
# CUDA 12.8 needs an NVIDIA driver of the 570 series or newer.
MIN_DRIVER_MAJOR=570
STEPS="${GPU_CHECK_STEPS:-5}"
NVIDIA_SMI="${NVIDIA_SMI:-nvidia-smi}"

die() {
  echo "gpu-check: $1" >&2
  exit "${2:-1}"
}

# --- 0. a GPU and a driver that can run the image's CUDA, before anything is installed ------------------
command -v "${NVIDIA_SMI}" >/dev/null 2>&1 ||
  die "no NVIDIA GPU here: nvidia-smi is not installed (this check needs one NVIDIA GPU with driver >= ${MIN_DRIVER_MAJOR}; nothing was installed)" 2
gpu="$("${NVIDIA_SMI}" --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)" ||
  die "nvidia-smi finds no usable GPU (driver not loaded, or no device visible to this container; nothing was installed)" 2
[ -n "${gpu}" ] || die "nvidia-smi lists no GPU (nothing was installed)" 2
driver="$(echo "${gpu}" | cut -d, -f2 | tr -d ' ')"
[ "${driver%%.*}" -ge "${MIN_DRIVER_MAJOR}" ] 2>/dev/null ||
  die "NVIDIA driver ${driver} is older than ${MIN_DRIVER_MAJOR}, the oldest that runs CUDA ${TORCH_CUDA} (the trainer image's torch); upgrade the driver (nothing was installed)" 2
echo "gpu-check: ${gpu}"
[ -x "${PYTHON}" ] || die "the worker environment ${WORKER}/.venv is missing: run \`npm run setup\` (or node tools/setup/setup.mjs) first" 2

# --- 1. CUDA torch + bitsandbytes ------------------------------------------------------------------------
torch_pin="$(grep -E '^torch==' "${WORKER}/requirements.txt")"
echo "gpu-check: installing ${torch_pin} (CUDA ${TORCH_CUDA}) and bitsandbytes==${BITSANDBYTES_VERSION}"
# The local version tag (+cu128) makes pip replace the environment's CPU build; the CUDA libraries come as
# nvidia-* wheels from the same index, everything else from pip's configured index.
"${PYTHON}" -m pip install --disable-pip-version-check -q --extra-index-url "${TORCH_INDEX_URL}" \
  "${torch_pin}+cu$(echo "${TORCH_CUDA}" | tr -d .)"
"${PYTHON}" -m pip install --disable-pip-version-check -q "bitsandbytes==${BITSANDBYTES_VERSION}"
"${PYTHON}" - "${TORCH_CUDA}" <<'EOF' || die "torch cannot use the GPU (see above)"
import sys
import torch
want = sys.argv[1]
print(f"gpu-check: torch {torch.__version__}, CUDA {torch.version.cuda}, device available: {torch.cuda.is_available()}")
if torch.version.cuda != want:
    sys.exit(f"torch is built for CUDA {torch.version.cuda}, expected {want}")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is false although nvidia-smi sees a GPU (driver/CUDA mismatch?)")
EOF

# --- 2. the worker's tests on CUDA --------------------------------------------------------------------------
echo "gpu-check: the worker's tests (CUDA and bitsandbytes tests must run, not skip)"
cd "${WORKER}"
report="$(mktemp)"
trap 'rm -f "${report}"' EXIT
status=0
"${PYTHON}" -m pytest -q -rs -p no:cacheprovider tests 2>&1 | tee "${report}" || status=$?
[ "${status}" -eq 0 ] || die "the worker's tests failed on this GPU machine (exit ${status})"
if grep -E "SKIPPED .*(test_nf4_cuda\.py|needs bitsandbytes \+ CUDA)" "${report}"; then
  die "the CUDA/bitsandbytes tests were skipped although a GPU and bitsandbytes are installed"
fi

# --- 3. Mistral-7B-shaped QLoRA: peak GPU memory and tokens/s against the budget ---------------------------
echo "gpu-check: QLoRA of a random Mistral-7B-shaped model (seq 1024, micro batch 4, ${STEPS} timed steps)"
cd "${ROOT}"
"${PYTHON}" tools/bench/qlora_bench.py --mistral-gpu --steps "${STEPS}"
echo "gpu-check: done"
