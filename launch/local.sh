#!/usr/bin/env bash
# One Ray node on this machine that this script starts, finds again and stops: exactly that node.
#
#   launch/local.sh start  [options]            a head node (single-box debugging; the head of a cluster)
#   launch/local.sh start  --dry-run [options]  print the `ray start` command (ports chosen); start nothing
#   launch/local.sh start  --address HEAD:PORT  a worker node joining that head (launch/ssh_cluster.sh);
#                                               returns once the head reports the node alive
#   launch/local.sh status [--port P]           this script's node for port P, then `ray status`
#   launch/local.sh env    [--port P]           export lines for your shell: eval "$(launch/local.sh env)"
#   launch/local.sh address [--port P]          the head's GCS address (HOST:PORT)
#   launch/local.sh run    [--port P] -- CMD    CMD against the head (RAY_ADDRESS, RAY_AUTH_MODE, token set)
#   launch/local.sh stop   [--port P]           stop the node(s) this script started for port P
#
# start options (defaults in brackets):
#   --port P               GCS port of the head; for a worker, taken from --address [6379]
#   --dashboard-port P     dashboard and job API [8265]      --dashboard-host H  its bind address [127.0.0.1]
#   --client-port P        Ray Client server [10001; when busy, the first free port of 23000-23999: outside
#                          Ray's worker ports (10002-19999) and Linux's ephemeral ports (32768-60999)]
#   --agent-port P         dashboard agent HTTP [0: any free port; Ray's 52365 clashes with other clusters]
#   --num-cpus N           logical CPUs [max(cores, 16)]     --num-gpus N        GPUs [Ray detects them]
#   --node-ip-address IP   the IP other nodes reach this one at [Ray's choice]
#   --auth token|disabled  [$RAY_AUTH_MODE, else token]
#   --temp-dir DIR         Ray's temp dir and this script's state [${HARDMODE_RAY_TMP:-/tmp}/hardmode-ray-UID-PORT-ROLE];
#                          keep it short (Ray's socket paths under it must fit in 107 characters);
#                          status/env/address/run/stop need the same --temp-dir (the commands
#                          `start` prints include it)
#   --timeout S            seconds to wait for the node to come up (a worker: and join the head) [120]
#
# Why not `ray start` / `ray stop` directly: `ray stop` terminates every Ray process of the user on the
# machine, other people's clusters included. Here `ray start --block` runs as the leader of a new
# session; its PID, start time and temp dir are recorded in the temp dir, and `stop` sends SIGTERM to
# that PID (Ray then shuts down the processes it started) and finally ends whatever is left in that
# session. Nothing is signalled unless the PID is still that process (same start time and command) or
# gone: a stale state file whose PID now belongs to another process is only removed.
# A private temp dir also keeps this node from overwriting /tmp/ray/ray_current_cluster, which other
# people's `ray.init(address="auto")` reads.
#
# Auth: Ray 2.60 rejects a client whose RAY_AUTH_MODE differs from the cluster's (InvalidAuthToken),
# and turns token mode on by itself when ~/.ray/auth_token exists. The mode is therefore always
# explicit: recorded at start, exported by `run` and printed by `env` for your shell. `token` (the
# default) uses $RAY_AUTH_TOKEN (kept for the node's clients in TEMP_DIR/auth_token, readable by you
# only, removed by `stop`), else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (created when
# missing); `run`, `env` and `status` point clients at that file (RAY_AUTH_TOKEN_PATH).
# Ray 2.60 cannot keep a node off the network: the GCS port, the raylet's two ports and the dashboard
# agent listen on every interface, the Ray Client port on 127.0.0.1 and the node's IP (whatever
# --node-ip-address says: Ray replaces 127.0.0.1 by the node's IP), metrics ports on 0.0.0.0; only the
# dashboard follows --dashboard-host. With `--auth disabled` anyone who reaches this machine can run
# code as you on the cluster: use it only on a machine nobody else can reach.
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

# Ray's default client port, else one between Ray's worker ports (10002-19999) and Linux's ephemeral
# ports (32768-60999), which Ray's other processes take.
client_port_default() {
  local p
  port_in_use 10001 || { echo 10001; return; }
  for ((p = 23000; p < 24000; p++)); do
    port_in_use "$p" || { echo "$p"; return; }
  done
  die "ports 10001 and 23000-23999 are all in use; choose a client port with --client-port"
}

# proc_field PID N: field N of /proc/PID/stat, empty when no process has that PID. Field 22 is the
# start time (clock ticks after boot): with the PID it names one process, as a reused PID starts later.
# Field 3 is the state (Z: a zombie).
proc_field() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  read -ra fields <<<"${stat##*) }"  # the fields after "PID (COMMAND) ": field 3 is index 0
  echo "${fields[$2 - 3]}"
}

# ---- state: KEY=VALUE lines in the node's temp dir --------------------------------------------

state_dir() { echo "${temp_dir:-${HARDMODE_RAY_TMP:-/tmp}/hardmode-ray-$(id -u)-$port-$1}"; }

# The options that find this node again, for the commands this script prints: --port, and --temp-dir
# when one was given (without it status/env/run/stop look in the default temp dir and find nothing).
node_opts() {
  printf -- '--port %s' "$port"
  [[ -z "$temp_dir" ]] || printf ' --temp-dir %q' "$temp_dir"
}

# The roles whose state files status/stop read: with --temp-dir both roles share one state file.
state_roles() {
  if [[ -n "$temp_dir" ]]; then echo head; else echo "$@"; fi
}

# where: "for port P" (and "in TEMP_DIR" when one was given), for messages.
where() { echo "for port $port${temp_dir:+ in $temp_dir}"; }

read_state() {  # read_state FILE: sets node_pid node_start_time node_role node_address node_dashboard
                #                  node_auth node_token_path node_temp_dir node_log node_id
  local key value
  node_start_time="" node_token_path="" node_id=""
  while IFS='=' read -r key value; do
    case "$key" in
      pid) node_pid=$value ;; start_time) node_start_time=$value ;; role) node_role=$value ;;
      address) node_address=$value ;; dashboard) node_dashboard=$value ;; auth) node_auth=$value ;;
      token_path) node_token_path=$value ;; temp_dir) node_temp_dir=$value ;; log) node_log=$value ;;
      node_id) node_id=$value ;;
    esac
  done <"$1"
}

# is_our_node PID TEMP_DIR START_TIME: is PID still the `ray start` this script launched with that temp
# dir (same start time and command), not a reused PID?
is_our_node() {
  [[ -n "$3" && "$(proc_field "$1" 22)" == "$3" ]] &&
    [[ "$(ps -ww -o args= -p "$1" 2>/dev/null)" == *"ray start"*"--temp-dir=$2"* ]]
}

# The recorded node's auth settings in this process's environment, for its clients.
use_node_auth() {
  export RAY_AUTH_MODE=$node_auth
  if [[ $node_auth == token ]]; then
    unset RAY_AUTH_TOKEN  # it would win over the node's token file
    export RAY_AUTH_TOKEN_PATH=$node_token_path
  fi
}

head_state() {
  local file
  file="$(state_dir head)/$STATE_FILE"
  [[ -f "$file" ]] || die "no head started by this script $(where) on this machine (launch/local.sh start $(node_opts))"
  read_state "$file"
  is_our_node "$node_pid" "$node_temp_dir" "$node_start_time" ||
    die "the $node_role $(where) (pid $node_pid) is gone; see $node_log, then: launch/local.sh stop $(node_opts)"
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
    if is_our_node "$node_pid" "$node_temp_dir" "$node_start_time"; then
      die "a $role $(where) is already running (pid $node_pid); launch/local.sh stop $(node_opts)"
    fi
  fi
  local ports=()
  [[ $agent_port != 0 ]] && ports+=("--agent-port=$agent_port")
  if [[ $role == head ]]; then
    [[ -n "$client_port" ]] || client_port=$(client_port_default)
    ports+=("--port=$port" "--dashboard-port=$dashboard_port" "--client-port=$client_port")
  fi
  local p
  for p in ${ports[@]+"${ports[@]}"}; do
    port_in_use "${p#*=}" && die "port ${p#*=} is in use (another Ray cluster?); choose another with ${p%=*}"
  done
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
  if ((dry_run)); then
    echo "RAY_AUTH_MODE=$auth $(printf '%q ' "${cmd[@]}" | sed 's/ $//')"
    return
  fi
  command -v ray >/dev/null || die "ray not found: run 'bash launch/bootstrap.sh' or activate the environment that has it"
  # The Python that runs `ray` (its #! line), for the join check; else the first on PATH.
  local ray_python=() first
  first=$(head -n 1 "$(command -v ray)")
  [[ $first == '#!'* && $first != *sh ]] && read -ra ray_python <<<"${first#'#!'}"
  ((${#ray_python[@]})) || ray_python=(python)

  export RAY_AUTH_MODE=$auth
  # On SIGTERM Ray first drains the node (for Serve replicas to move), 30 s by default, and a head
  # does not finish draining: `stop` would wait it out every time. Batch jobs have nothing to move.
  export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-5}
  mkdir -p "$dir"
  chmod 700 "$dir"
  rm -f "$dir/ray_current_cluster" "$dir/$STATE_FILE"
  local token_path=""
  if [[ $auth == token ]]; then
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
      token_path=$dir/auth_token
      (umask 077 && printf '%s' "$RAY_AUTH_TOKEN" >"$token_path")
    elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
      [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is not a file with a token"
      token_path=$(cd "$(dirname "$RAY_AUTH_TOKEN_PATH")" && pwd)/$(basename "$RAY_AUTH_TOKEN_PATH")
    else
      ray get-auth-token --generate >/dev/null  # ~/.ray/auth_token, created when missing
      token_path=$HOME/.ray/auth_token
    fi
    unset RAY_AUTH_TOKEN
    export RAY_AUTH_TOKEN_PATH=$token_path  # the node's processes and its clients read the same file
  fi
  local log="$dir/ray-start.log"
  # Not a process-group leader (no job control here), so setsid makes `ray start` a session leader
  # in place: $! is its PID and every process it starts stays in that session.
  (cd "$root" && exec setsid "${cmd[@]}" </dev/null >"$log" 2>&1) &
  local pid=$!
  local started
  started=$(proc_field "$pid" 22)
  # `ray start` writes the GCS address to ray_current_cluster once the node's processes are up.
  local deadline=$((SECONDS + timeout))
  until [[ -s "$dir/ray_current_cluster" ]]; do
    kill -0 "$pid" 2>/dev/null || start_failed "ray start exited before the node came up"
    ((SECONDS < deadline)) || start_failed "the node did not come up within ${timeout}s"
    sleep 0.5
  done
  local gcs node_id joined=""
  gcs=$(<"$dir/ray_current_cluster")
  node_id=$(raylet_node_id "$pid")
  if [[ $role == worker ]]; then
    # The address file alone does not say the head counts this node: wait until its GCS reports it alive.
    local left=$((deadline - SECONDS)) out
    ((left > 0)) || left=1
    if ! out=$(timeout "$((left + 15))" "${ray_python[@]}" -c "$JOIN_CHECK" "$gcs" "$node_id" "$dir" "$pid" \
                 "$left" 2>&1); then
      start_failed "the worker did not join the head at $gcs within ${timeout}s:
${out:-(the check was killed after ${left}s + 15s)}"
    fi
    read -r node_id joined <<<"${out##*$'\n'}"
  fi
  local dashboard=""
  [[ $role == head ]] && dashboard="http://$dashboard_host:$dashboard_port"
  printf '%s\n' "pid=$pid" "start_time=$started" "role=$role" "address=$gcs" "dashboard=$dashboard" \
    "auth=$auth" "token_path=$token_path" "temp_dir=$dir" "log=$log" "node_id=$node_id" >"$dir/$STATE_FILE"

  local self="launch/local.sh" opts warning=""
  opts=$(node_opts)
  if [[ $auth == disabled ]]; then
    warning="WARNING: auth disabled, and the GCS ($gcs), raylet and Ray Client ports listen on the network
(Ray 2.60 cannot bind them to localhost): anyone who reaches this machine can run code as you.
Leave out --auth disabled (token auth is the default) unless nobody else can reach this machine."
  fi
  if [[ $role == worker ]]; then
    echo "Ray worker node up: pid $pid, node ID $node_id, joined $gcs ($joined nodes alive; auth: $auth)."
    echo "Stop it with: $self stop $opts"
    [[ -z "$warning" ]] || echo "$warning"
    return
  fi
  cat <<EOF
Ray head up: pid $pid, node ID ${node_id:-?}, GCS $gcs, $num_cpus logical CPUs${num_gpus:+, $num_gpus GPUs}, auth mode '$auth'.
  dashboard + job API:  $dashboard  (bound to $dashboard_host)
  Ray Client:           ray://${gcs%:*}:$client_port
  logs:                 $dir/session_latest/logs${token_path:+
  token:                $token_path}
Clients must use the same RAY_AUTH_MODE${token_path:+ and token}. In your shell:
  eval "\$($self env $opts)"   # exports RAY_AUTH_MODE=$auth${token_path:+, RAY_AUTH_TOKEN_PATH}, RAY_ADDRESS, RAY_API_SERVER_ADDRESS
Then:
  $self run $opts -- python -m curate run --config configs/curate/<recipe>.yaml
  python -m launch submit --address $dashboard -- python -m curate run --config configs/curate/<recipe>.yaml
  $self status $opts
  $self stop $opts       # this head only; other Ray clusters on the machine keep running
EOF
  [[ -z "$warning" ]] || echo "$warning"
}

# start_failed MESSAGE: the node `start` is bringing up did not make it: stop it, show the tails of its
# logs (`ray start`'s and the raylet's), exit. Reads start's pid, dir, started and log.
start_failed() {
  local tails logs=$dir/session_latest/logs
  tails=$(tail -n 30 "$log" 2>/dev/null; tail -n 15 "$logs/raylet.out" 2>/dev/null || true)
  stop_node "$pid" "$dir" "$started" >/dev/null || true
  printf '%s\n' "$tails" >&2
  [[ -d "$logs" ]] || logs=""
  die "$1
(log: $log${logs:+; node logs: $logs})"
}

# raylet_node_id PID: the node ID of the raylet in session PID (the raylet, a C++ binary, keeps the
# command line `ray start` gave it, --node_id included); empty when there is none.
raylet_node_id() {
  ps -ww -o args= -s "$1" 2>/dev/null | awk '$1 ~ /\/raylet$/' | grep -o -- '--node_id=[0-9a-f]*' | head -n 1 |
    cut -d= -f2 || true
}

# The check that a worker joined: python -c JOIN_CHECK GCS NODE_ID TEMP_DIR PID SECONDS prints
# "NODE_ID ALIVE_NODES" once the GCS at GCS lists the node alive; exits 1 after SECONDS, or when PID
# (`ray start`) is gone. It reads the GCS's node table as ray.nodes() does, without a driver: ray.init
# here would attach to some raylet of this machine (Ray prefers a head when several run on one host).
# Without NODE_ID it takes the one alive node whose raylet socket lies under TEMP_DIR.
JOIN_CHECK='
import os, sys, time
gcs, node_id, temp_dir, leader, seconds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
deadline = time.monotonic() + seconds
from ray._private.services import _get_gcs_client_options
from ray._private.state import GlobalState
state = GlobalState()
state._initialize_global_state(_get_gcs_client_options(gcs))
ours = os.path.realpath(temp_dir) + os.sep
def running():
    try:
        with open(f"/proc/{leader}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
problem = "the head does not list it"
while True:
    try:
        nodes = state.node_table()
    except Exception as e:
        nodes, problem = [], f"reading the head node table failed: {type(e).__name__}: {e}"
    alive = [n for n in nodes if n["Alive"]]
    if node_id:
        mine = [n for n in nodes if n["NodeID"] == node_id]
    else:
        mine = [n for n in nodes if os.path.realpath(n["RayletSocketName"]).startswith(ours)]
    live = [n for n in mine if n["Alive"]]
    if len(live) == 1:
        print(live[0]["NodeID"], len(alive))
        sys.exit(0)
    if live:
        problem = f"{len(live)} alive nodes have their raylet under {temp_dir}"
    elif mine:
        reason = mine[-1]["DeathReasonMessage"] or mine[-1]["DeathReason"]
        problem = f"the head lists it as dead ({reason})"
    if not running():
        problem += "; ray start exited"
        break
    if time.monotonic() > deadline:
        break
    time.sleep(0.5)
name = node_id or "with its raylet under " + temp_dir
print(f"node {name}: {problem}; {len(alive)} nodes alive", file=sys.stderr)
sys.exit(1)
'

# ---- stop ------------------------------------------------------------------------------------

# stop_node PID TEMP_DIR START_TIME: SIGTERM the `ray start --block` session leader (Ray stops what it
# started), then end what is left in its session. Fails, signalling nothing, when PID is now another
# process (a stale state file).
stop_node() {
  local pid=$1 dir=$2 started=$3 i now left sig
  if is_our_node "$pid" "$dir" "$started"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 5; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
  else
    now=$(proc_field "$pid" 22)
    if [[ -n "$now" && ("$now" != "$started" || "$(proc_field "$pid" 3)" != Z) ]]; then
      echo "pid $pid is not the Ray node this script started (start time or command differ; it is now:" \
        "$(ps -ww -o args= -p "$pid" | cut -c1-100)); nothing signalled"
      return 1
    fi
  fi
  # The leader is ours, or gone (or its zombie: our start time). Then every member of session PID is
  # this node's: setsid made PID the session id, only the leader's descendants join it, and Linux does
  # not reuse a PID while it is still a session id. Members cannot be matched by command line or
  # /proc/PID/environ instead: Ray's processes rename themselves, which overwrites both.
  # Zombies are skipped (init reaps them).
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
  for role in $(state_roles worker head); do
    file="$(state_dir "$role")/$STATE_FILE"
    [[ -f "$file" ]] || continue
    found=1
    read_state "$file"
    if stop_node "$node_pid" "$node_temp_dir" "$node_start_time"; then
      echo "stopped the Ray $node_role $(where) (pid $node_pid); its logs stay in $node_temp_dir"
    else
      echo "removed the stale state file $file of the Ray $node_role $(where)"
    fi
    rm -f "$file"
    [[ $node_token_path != "$node_temp_dir/auth_token" ]] || rm -f "$node_token_path"  # the copy start made
  done
  ((found)) || echo "no Ray node started by this script $(where) on this machine"
}

# ---- status / env / run ------------------------------------------------------------------------

export_lines() {
  echo "export RAY_AUTH_MODE=$node_auth"
  if [[ $node_auth == token ]]; then
    echo "unset RAY_AUTH_TOKEN"
    printf 'export RAY_AUTH_TOKEN_PATH=%q\n' "$node_token_path"
  fi
  echo "export RAY_ADDRESS=$node_address"
  echo "export RAY_API_SERVER_ADDRESS=$node_dashboard"
}

status() {
  local role file any=0
  for role in $(state_roles head worker); do
    file="$(state_dir "$role")/$STATE_FILE"
    [[ -f "$file" ]] || continue
    any=1
    read_state "$file"
    if is_our_node "$node_pid" "$node_temp_dir" "$node_start_time"; then
      echo "$node_role: pid $node_pid${node_id:+, node ID $node_id}, GCS $node_address, auth '$node_auth'${node_dashboard:+, dashboard $node_dashboard}"
    else
      echo "$node_role: pid $node_pid is gone (log: $node_log); clean up with: launch/local.sh stop $(node_opts)"
    fi
  done
  ((any)) || die "no Ray node started by this script $(where) on this machine"
  [[ -f "$(state_dir head)/$STATE_FILE" ]] || return 0
  head_state
  use_node_auth
  ray status --address "$node_address"
}

# ---- arguments -------------------------------------------------------------------------------

action=${1:-}
[[ $# -gt 0 ]] && shift
port=6379 dashboard_port=8265 dashboard_host=127.0.0.1 client_port="" agent_port=0
num_cpus=$(( $(nproc) > 16 ? $(nproc) : 16 )) num_gpus="" node_ip="" address=""
auth=${RAY_AUTH_MODE:-token} temp_dir="" timeout=120 grace=30 dry_run=0
command_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; command_args=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
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

# Absolute: the state file, `ray start` (run from the checkout) and the printed commands agree on it.
[[ -z "$temp_dir" || $temp_dir == /* ]] || temp_dir=$PWD/$temp_dir

case "$action" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) head_state; export_lines ;;
  address) head_state; echo "$node_address" ;;
  run)
    [[ ${#command_args[@]} -gt 0 ]] || die "run needs a command after --"
    head_state
    use_node_auth
    export RAY_ADDRESS=$node_address RAY_API_SERVER_ADDRESS=$node_dashboard
    exec "${command_args[@]}" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
