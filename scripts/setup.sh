#!/usr/bin/env bash
# Create .venv with branchrl and its dependencies, once; later calls return in a moment.
# CPU machines get the pinned CPU torch build (seconds from a local wheel cache); machines with an
# NVIDIA driver get pip's default CUDA torch. `BRANCHRL_TORCH="torch==X"` chooses explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
stamp=".venv/.branchrl-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && .venv/bin/python -c "import branchrl" 2>/dev/null; then
  exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "branchrl needs Python >= 3.10")'
echo "[setup] creating .venv (one time, about 1-2 minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${BRANCHRL_TORCH:-}" ]; then
    "${pip[@]}" "$BRANCHRL_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" torch                      # CUDA build for GPU machines
  else
    "${pip[@]}" "torch==2.13.0" || "${pip[@]}" torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${pip[@]}" -e ".[test]"
rm -f .venv/.branchrl-setup-*
touch "$stamp"
echo "[setup] ready: $(.venv/bin/python -c 'import torch, transformers, ray; print(f"torch {torch.__version__}, transformers {transformers.__version__}, ray {ray.__version__}")')" >&2
