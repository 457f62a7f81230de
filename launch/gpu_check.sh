#!/usr/bin/env bash
# One prepared GPU check (issue 14): bash launch/gpu_check.sh [--out FILE] [--model ...] [--stages ...]
# Offline; on one GPU in <= 8 minutes; on a CPU machine the GPU-only stages are reported as skipped.
# `bash launch/gpu_check.sh --help` lists the stages and options. Python: $PYTHON, else .venv-gpu,
# else .venv, else python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$root/.venv-gpu/bin/python" ]]; then
    py="$root/.venv-gpu/bin/python"
elif [[ -x "$root/.venv/bin/python" ]]; then
    py="$root/.venv/bin/python"
else
    py=python3
fi
# Paths on the command line stay relative to the caller's directory; the stages run in the repository root.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}" RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
exec "$py" -m launch.gpu_check "$@"
