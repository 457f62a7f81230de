#!/usr/bin/env bash
# One Ray node on this machine that this script starts, finds again and stops: exactly that node.
#
#   launch/local.sh start  [options]            a head node (single-box debugging; the head of a cluster)
#   launch/local.sh start  --address HEAD:PORT  a worker node joining that head (launch/ssh_cluster.sh)
#   launch/local.sh status [--port P]           this script's node for port P, then `ray status`
#   launch/local.sh env    [--port P]           export lines for your shell: eval "$(launch/local.sh env)"
#   launch/local.sh address [--port P]          the head's GCS address (HOST:PORT)
#   launch/local.sh run    [--port P] -- CMD    CMD against the head (RAY_ADDRESS, RAY_AUTH_MODE set)
#   launch/local.sh stop   [--port P]           stop the node(s) this script started for port P
#
# start options (defaults in brackets):
#   --port P               GCS port of the head; for a worker, taken from --address [6379]
#   --dashboard-port P     dashboard and job API [8265]      --dashboard-host H  its bind address [127.0.0.1]
#   --client-port P        Ray Client server [10001 or the next free port]
#   --agent-port P         dashboard agent HTTP [0: any free port; Ray's 52365 clashes with other clusters]
#   --num-cpus N           logical CPUs [max(cores, 16)]     --num-gpus N        GPUs [Ray detects them]
#   --node-ip-address IP   the IP other nodes reach this one at [Ray's choice]
#   --auth disabled|token  [$RAY_AUTH_MODE, else disabled]
#   --temp-dir DIR         Ray's temp dir and this script's state [${HARDMODE_RAY_TMP:-/tmp}/hardmode-ray-UID-PORT-ROLE];
#                          keep it short (Ray's socket paths under it must fit in 107 characters);
#                          status/env/address/run/stop need the same --temp-dir
#   --timeout S            seconds to wait for the node to come up [120]
#
# Why not `ray start` / `ray stop` directly: `ray stop` terminates every Ray process of the user on the
# machine, other people's clusters included. Here `ray start --block` runs as the leader of a new
# session; its PID and temp dir are recorded in the temp dir, and `stop` sends SIGTERM to that PID
# (Ray then shuts down the processes it started) and finally ends whatever is left in that session.
# A private temp dir also keeps this node from overwriting /tmp/ray/ray_current_cluster, which other
# people's `ray.init(address="auto")` reads.
#
# Auth: Ray 2.60 rejects a client whose RAY_AUTH_MODE differs from the cluster's (InvalidAuthToken),
# and turns token mode on by itself when ~/.ray/auth_token exists. The mode is therefore always
# explicit: recorded at start, exported by `run` and printed by `env` for your shell. `disabled` is for
# single-user boxes: the GCS port listens on every interface. `token` uses $RAY_AUTH_TOKEN,
# $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (created when missing).
#
# Logical CPUs are scheduling slots, not cores: Ray waits forever (no error) for an actor it cannot
# place. `python -m curate run` needs ray.min_actors x ray.num_cpus + 2 of them and verl's trainer
# (TransferQueue, agent and reward loops) starts many 1-CPU actors; hence at least 16 by default.
# verl's resource pools ask for GPUs even on CPU: for configs/rl/toy_cpu.yaml declare --num-gpus 1.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HARDMODE_VENV:-$root/.venv-gpu}  # the GPU environment (make env-gpu) where there is one
[[ -n "${HARDMODE_VENV:-}" || -x "$venv/bin/ray" ]] || venv=$root/.venv
# The project's environment first, so that `ray`, and `python` in jobs and workers, are its own.
if [[ -x "$venv/bin/ray" ]]; then
  PATH="$venv/bin:$PATH"
  export PATH
fi
STATE_FILE=hardmode-node.state

die() { echo "local.sh: $*" >&2; exit 2; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

first_free_port() {
  local p=$1
  while port_in_use "$p"; do p=$((p + 1)); done
  echo "$p"
}

# ---- state: KEY=VALUE lines in the node's temp dir --------------------------------------------

state_dir() { echo "${temp_dir:-${HARDMODE_RAY_TMP:-/tmp}/hardmode-ray-$(id -u)-$port-$1}"; }

read_state() {  # read_state FILE: sets node_pid node_role node_address node_dashboard node_auth node_temp_dir node_log
  local key value
  while IFS='=' read -r key value; do
    case "$key" in
      pid) node_pid=$value ;; role) node_role=$value ;; address) node_address=$value ;;
      dashboard) node_dashboard=$value ;; auth) node_auth=$value ;; temp_dir) node_temp_dir=$value ;;
      log) node_log=$value ;;
    esac
  done <"$1"
}

# Is PID still the `ray start` this script launched with that temp dir (not a reused PID)?
is_our_node() { [[ "$(ps -ww -o args= -p "$1" 2>/dev/null)" == *"ray start"*"--temp-dir=$2"* ]]; }

head_state() {
  local file
  file="$(state_dir head)/$STATE_FILE"
  [[ -f "$file" ]] || die "no head started by this script for port $port on this machine (launch/local.sh start --port $port)"
  read_state "$file"
  is_our_node "$node_pid" "$node_temp_dir" || die "the head for port $port (pid $node_pid) is gone; see $node_log, then: launch/local.sh stop --port $port"
}

# ---- start -----------------------------------------------------------------------------------

start() {
  local role=head
  if [[ -n "$address" ]]; then
    role=worker
    port=${address##*:}
  fi
  case "$auth" in disabled | token) ;; *) die "--auth must be disabled or token, not '$auth'" ;; esac
  local dir
  dir=$(state_dir "$role")
  if [[ -f "$dir/$STATE_FILE" ]]; then
    read_state "$dir/$STATE_FILE"
    if is_our_node "$node_pid" "$node_temp_dir"; then
      die "a $role for port $port is already running (pid $node_pid); launch/local.sh stop --port $port"
    fi
  fi
  local ports=()
  [[ $agent_port != 0 ]] && ports+=("--agent-port=$agent_port")
  if [[ $role == head ]]; then
    [[ -n "$client_port" ]] || client_port=$(first_free_port 10001)
    ports+=("--port=$port" "--dashboard-port=$dashboard_port" "--client-port=$client_port")
  fi
  local p
  for p in ${ports[@]+"${ports[@]}"}; do
    port_in_use "${p#*=}" && die "port ${p#*=} is in use (another Ray cluster?); choose another with ${p%=*}"
  done
  command -v ray >/dev/null || die "ray not found: run 'bash launch/bootstrap.sh' or activate the environment that has it"

  export RAY_AUTH_MODE=$auth
  # On SIGTERM Ray first drains the node (for Serve replicas to move), 30 s by default, and a head
  # does not finish draining: `stop` would wait it out every time. Batch jobs have nothing to move.
  export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-5}
  if [[ $auth == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    ray get-auth-token --generate >/dev/null  # ~/.ray/auth_token, created when missing
  fi
  mkdir -p "$dir"
  chmod 700 "$dir"
  rm -f "$dir/ray_current_cluster" "$dir/$STATE_FILE"
  local cmd=(ray start --block "--temp-dir=$dir" "--num-cpus=$num_cpus"
             "--dashboard-agent-listen-port=$agent_port" --disable-usage-stats)
  [[ -n "$num_gpus" ]] && cmd+=("--num-gpus=$num_gpus")
  [[ -n "$node_ip" ]] && cmd+=("--node-ip-address=$node_ip")
  if [[ $role == head ]]; then
    cmd+=(--head "--port=$port" "--dashboard-host=$dashboard_host" "--dashboard-port=$dashboard_port"
          "--ray-client-server-port=$client_port")
  else
    cmd+=("--address=$address")
  fi
  local log="$dir/ray-start.log"
  # Not a process-group leader (no job control here), so setsid makes `ray start` a session leader
  # in place: $! is its PID and every process it starts stays in that session.
  (cd "$root" && exec setsid "${cmd[@]}" </dev/null >"$log" 2>&1) &
  local pid=$!
  # `ray start` writes the GCS address to ray_current_cluster once the node's processes are up.
  local waited=0
  until [[ -s "$dir/ray_current_cluster" ]]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2
      die "ray start exited before the node came up (log: $log)"
    fi
    if ((waited >= timeout * 2)); then
      stop_node "$pid" "$dir" >/dev/null
      tail -n 30 "$log" >&2
      die "the node did not come up within ${timeout}s (log: $log)"
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  local gcs
  gcs=$(<"$dir/ray_current_cluster")
  local dashboard=""
  [[ $role == head ]] && dashboard="http://$dashboard_host:$dashboard_port"
  printf '%s\n' "pid=$pid" "role=$role" "address=$gcs" "dashboard=$dashboard" "auth=$auth" \
    "temp_dir=$dir" "log=$log" >"$dir/$STATE_FILE"

  local self="launch/local.sh"
  if [[ $role == worker ]]; then
    echo "Ray worker node up: pid $pid, joined $gcs (auth: $auth). Stop it with: $self stop --port $port"
    return
  fi
  cat <<EOF
Ray head up: pid $pid, GCS $gcs, $num_cpus logical CPUs${num_gpus:+, $num_gpus GPUs}, auth mode '$auth'.
  dashboard + job API:  $dashboard  (bound to $dashboard_host)
  Ray Client:           ray://${gcs%:*}:$client_port
  logs:                 $dir/session_latest/logs
Clients must use the same RAY_AUTH_MODE. In your shell:
  eval "\$($self env --port $port)"   # exports RAY_AUTH_MODE=$auth, RAY_ADDRESS, RAY_API_SERVER_ADDRESS
Then:
  $self run --port $port -- python -m curate run --config configs/curate/<recipe>.yaml
  python -m launch submit --address $dashboard -- python -m curate run --config configs/curate/<recipe>.yaml
  $self status --port $port
  $self stop --port $port       # this head only; other Ray clusters on the machine keep running
EOF
}

# ---- stop ------------------------------------------------------------------------------------

# stop_node PID TEMP_DIR: SIGTERM the `ray start --block` session leader (Ray stops what it started),
# then end what is left in its session. Only that PID and its session are ever signalled.
stop_node() {
  local pid=$1 dir=$2 i left sig
  if is_our_node "$pid" "$dir"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 5; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
  fi
  # A session id is not reused while any member lives, so these are this node's processes
  # (zombies are skipped: init reaps them).
  for sig in TERM KILL; do
    left=$(ps -o pid=,stat= -s "$pid" 2>/dev/null | awk '$2 !~ /^Z/ {print $1}' | tr '\n' ' ' || true)
    [[ -z "${left// /}" ]] && break
    echo "ending leftover processes of session $pid ($sig): $left"
    # shellcheck disable=SC2086  # a list of PIDs
    kill "-$sig" $left 2>/dev/null || true
    sleep 2
  done
}

stop() {
  local role file found=0
  for role in worker head; do
    file="$(state_dir "$role")/$STATE_FILE"
    [[ -f "$file" ]] || continue
    found=1
    read_state "$file"
    stop_node "$node_pid" "$node_temp_dir"
    rm -f "$file"
    echo "stopped the Ray $node_role for port $port (pid $node_pid); its logs stay in $node_temp_dir"
  done
  ((found)) || echo "no Ray node started by this script for port $port on this machine"
}

# ---- status / env / run ------------------------------------------------------------------------

export_lines() {
  echo "export RAY_AUTH_MODE=$node_auth"
  echo "export RAY_ADDRESS=$node_address"
  echo "export RAY_API_SERVER_ADDRESS=$node_dashboard"
}

status() {
  local role file any=0
  for role in head worker; do
    file="$(state_dir "$role")/$STATE_FILE"
    [[ -f "$file" ]] || continue
    any=1
    read_state "$file"
    if is_our_node "$node_pid" "$node_temp_dir"; then
      echo "$node_role: pid $node_pid, GCS $node_address, auth '$node_auth'${node_dashboard:+, dashboard $node_dashboard}"
    else
      echo "$node_role: pid $node_pid is gone (log: $node_log); clean up with: launch/local.sh stop --port $port"
    fi
  done
  ((any)) || die "no Ray node started by this script for port $port on this machine"
  [[ -f "$(state_dir head)/$STATE_FILE" ]] || return 0
  head_state
  RAY_AUTH_MODE=$node_auth ray status --address "$node_address"
}

# ---- arguments -------------------------------------------------------------------------------

action=${1:-}
[[ $# -gt 0 ]] && shift
port=6379 dashboard_port=8265 dashboard_host=127.0.0.1 client_port="" agent_port=0
num_cpus=$(( $(nproc) > 16 ? $(nproc) : 16 )) num_gpus="" node_ip="" address=""
auth=${RAY_AUTH_MODE:-disabled} temp_dir="" timeout=120 grace=30
command_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; command_args=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    --port | --dashboard-port | --dashboard-host | --client-port | --agent-port | --num-cpus | --num-gpus | \
      --node-ip-address | --address | --auth | --temp-dir | --timeout)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --port) port=$2 ;; --dashboard-port) dashboard_port=$2 ;; --dashboard-host) dashboard_host=$2 ;;
        --client-port) client_port=$2 ;; --agent-port) agent_port=$2 ;; --num-cpus) num_cpus=$2 ;;
        --num-gpus) num_gpus=$2 ;; --node-ip-address) node_ip=$2 ;; --address) address=$2 ;;
        --auth) auth=$2 ;; --temp-dir) temp_dir=$2 ;; --timeout) timeout=$2 ;;
      esac
      shift 2 ;;
    *) die "unknown argument '$1' (launch/local.sh --help)" ;;
  esac
done

case "$action" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) head_state; export_lines ;;
  address) head_state; echo "$node_address" ;;
  run)
    [[ ${#command_args[@]} -gt 0 ]] || die "run needs a command after --"
    head_state
    export RAY_AUTH_MODE=$node_auth RAY_ADDRESS=$node_address RAY_API_SERVER_ADDRESS=$node_dashboard
    exec "${command_args[@]}" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
