#!/usr/bin/env bash
# A Ray cluster over SSH for machines without Slurm: the head on the hostfile's first host, a worker
# on each next one, a wait until every node and GPU has joined, the command on the head, teardown.
#
#   launch/ssh_cluster.sh --hostfile hosts.txt --nodes 2 --gpus-per-node 8 -- \
#       python -m curate run --config configs/curate/orsta_qwen25vl7b.yaml \
#       ray.min_actors=16 ray.max_actors=16 data.path=/shared/orsta/train output.path=/shared/runs/orsta
#   launch/ssh_cluster.sh --hostfile hosts.txt --nodes 2 --gpus-per-node 8      # up: no command, keep it
#   launch/ssh_cluster.sh --hostfile hosts.txt --down                          # stop what `up` started
#   launch/ssh_cluster.sh --dry-run ...                                          # print the commands only
#
# Each host runs launch/local.sh from the project checkout at --remote-dir (default: this checkout's
# path), which must exist on every host with its environment (.venv-gpu, else .venv, or the Ray on its PATH): a shared
# filesystem, or a copy plus `bash launch/bootstrap.sh` on each host. local.sh starts exactly one Ray
# node per host and stops exactly that node (no `ray stop`). The command's inputs and outputs, and
# HARDMODE_CACHE (the toy model cache), must be on storage every host sees.
#
# Options:
#   --hostfile FILE      one host per line ([user@]host), '#' comments; the first is the head (required)
#   --nodes N            use the first N hosts [all]
#   --gpus-per-node G    --cpus-per-node C   what each node declares [Ray detects GPUs; max(cores, 16) CPUs]
#   --port P [6379]      --dashboard-port P [8265]   --auth token|disabled [token]   --timeout S [600]
#   --remote-dir DIR     the checkout on the hosts [this checkout's path]
#   --down               stop the nodes on the first N hosts      --dry-run (or DRY_RUN=1)
# Environment: SSH_OPTS (extra ssh options, e.g. "-p 2222 -i ~/.ssh/cluster"), HEAD_IP (the address
#   workers use for the head, e.g. its InfiniBand IP; default: the one Ray picks), DASHBOARD_HOST
#   [127.0.0.1; 0.0.0.0 to submit jobs from other machines], RAY_AUTH_TOKEN.
#
# Auth: the cluster's ports are reachable from the network, so it uses Ray's token auth by default.
# The token ($RAY_AUTH_TOKEN, else `ray get-auth-token --generate` here) reaches each host on ssh's
# stdin, never on a command line; local.sh keeps it in the node's temp dir (yours only) until `stop`.
set -euo pipefail

die() { echo "ssh_cluster.sh: $*" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HARDMODE_VENV:-$root/.venv-gpu}  # the GPU environment (make env-gpu) where there is one
[[ -n "${HARDMODE_VENV:-}" || -x "$venv/bin/ray" ]] || venv=$root/.venv
if [[ -x "$venv/bin/ray" ]]; then
  PATH="$venv/bin:$PATH"
  export PATH
fi

dry_run=${DRY_RUN:-0}
hostfile="" nodes="" gpus="" cpus="" port=6379 dashboard_port=8265 auth=token timeout=600
remote_dir=$root down=0
command_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; command_args=("$@"); break ;;
    --dry-run) dry_run=1; shift ;;
    --down) down=1; shift ;;
    --hostfile | --nodes | --gpus-per-node | --cpus-per-node | --port | --dashboard-port | --auth | --timeout | \
      --remote-dir)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --hostfile) hostfile=$2 ;; --nodes) nodes=$2 ;; --gpus-per-node) gpus=$2 ;; --cpus-per-node) cpus=$2 ;;
        --port) port=$2 ;; --dashboard-port) dashboard_port=$2 ;; --auth) auth=$2 ;; --timeout) timeout=$2 ;;
        --remote-dir) remote_dir=$2 ;;
      esac
      shift 2 ;;
    *) die "unknown argument '$1'; the command goes after --" ;;
  esac
done
case "$auth" in disabled | token) ;; *) die "--auth must be disabled or token, not '$auth'" ;; esac
[[ -n "$hostfile" ]] || die "--hostfile is required (see launch/hostfile.example)"
[[ -f "$hostfile" ]] || die "hostfile $hostfile not found"

mapfile -t hosts < <(sed -e 's/#.*//' "$hostfile" | awk 'NF {print $1}')
((${#hosts[@]})) || die "no hosts in $hostfile"
nodes=${nodes:-${#hosts[@]}}
((nodes <= ${#hosts[@]})) || die "--nodes $nodes but $hostfile lists ${#hosts[@]} hosts"
hosts=("${hosts[@]:0:nodes}")
head=${hosts[0]}
workers=("${hosts[@]:1}")
read -ra ssh_opts <<<"${SSH_OPTS:-}"
ssh_opts=(-o BatchMode=yes ${ssh_opts[@]+"${ssh_opts[@]}"})

token=""
if [[ $auth == token ]]; then
  if ((dry_run)); then
    # shellcheck disable=SC2016  # printed, not expanded
    echo 'RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$(ray get-auth-token --generate)}'
    # shellcheck disable=SC2016
    token='"$RAY_AUTH_TOKEN"'
  else
    token=${RAY_AUTH_TOKEN:-$(ray get-auth-token --generate)}
  fi
fi

squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# on HOST ARGS...: run `launch/local.sh ARGS...` in the checkout on HOST (printed on a dry run).
# The remote command is one string quoted here (printf %q), so it expands on this side on purpose.
# `start` gets the token on stdin; local.sh keeps it for the node's clients (`run`).
on() {
  local host=$1
  shift
  local remote stdin=""
  remote="cd $(printf '%q' "$remote_dir") && "
  if [[ -n "$token" && $1 == start ]]; then
    remote+="IFS= read -r RAY_AUTH_TOKEN && export RAY_AUTH_TOKEN && "
    stdin=$token
  fi
  remote+="launch/local.sh $(printf '%q ' "$@" | sed 's/ $//')"
  if ((dry_run)); then
    echo "ssh ${ssh_opts[*]} $host $(squote "$remote")${stdin:+ <<<$stdin}"
  elif [[ -n "$stdin" ]]; then
    # shellcheck disable=SC2029
    ssh "${ssh_opts[@]}" "$host" "$remote" <<<"$stdin"
  else
    # shellcheck disable=SC2029
    ssh "${ssh_opts[@]}" "$host" "$remote" </dev/null
  fi
}

teardown() {
  local host
  ((dry_run)) && echo "# teardown, workers first:"
  for host in ${workers[@]+"${workers[@]}"} "$head"; do
    on "$host" stop --port "$port" || echo "ssh_cluster.sh: stopping the node on $host failed; run: launch/local.sh stop --port $port there" >&2
  done
}

if ((down)); then
  teardown
  exit 0
fi

# ---- start ---------------------------------------------------------------------------------------
node_args=(--auth "$auth" --timeout "$timeout")
[[ -n "$gpus" ]] && node_args+=(--num-gpus "$gpus")
[[ -n "$cpus" ]] && node_args+=(--num-cpus "$cpus")
echo "# Ray on $nodes node(s) x ${gpus:-(detected)} GPU(s): head $head, workers: ${workers[*]:-none}; checkout $remote_dir"
on_exit() {
  local status=$?
  teardown
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

head_args=(start --port "$port" --dashboard-port "$dashboard_port" --dashboard-host "${DASHBOARD_HOST:-127.0.0.1}")
[[ -n "${HEAD_IP:-}" ]] && head_args+=(--node-ip-address "$HEAD_IP")
on "$head" "${head_args[@]}" "${node_args[@]}"
if [[ -n "${HEAD_IP:-}" ]]; then
  gcs=$HEAD_IP:$port
elif ((dry_run)); then
  on "$head" address --port "$port"
  gcs=${head#*@}:$port
  echo "# dry run: the head's address printed by the line above is shown as $gcs"
else
  gcs=$(on "$head" address --port "$port")
fi

pids=()
for host in ${workers[@]+"${workers[@]}"}; do
  if ((dry_run)); then
    on "$host" start --address "$gcs" "${node_args[@]}"
  else
    on "$host" start --address "$gcs" "${node_args[@]}" &
    pids+=($!)
  fi
done
for pid in ${pids[@]+"${pids[@]}"}; do
  wait "$pid" || die "a worker did not start (its output is above)"
done
on "$head" run --port "$port" -- python -m launch wait --nodes "$nodes" --gpus $((nodes * ${gpus:-0})) --timeout "$timeout"

if ((${#command_args[@]} == 0)); then
  trap - EXIT
  echo "# cluster up; submit from $head: python -m launch submit --address http://127.0.0.1:$dashboard_port -- COMMAND"
  echo "# stop it: launch/ssh_cluster.sh --hostfile $hostfile --nodes $nodes --port $port --down"
  exit 0
fi
on "$head" run --port "$port" -- env PYTHONUNBUFFERED=1 "${command_args[@]}"
