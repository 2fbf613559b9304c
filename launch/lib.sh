# Shared by torchrun_single_node.sh and torchrun_multi_node.sh (sourced, not run): option
# parsing, torchrun and GPU detection, the environment, and the torchrun command line.
#
# Launcher options (each also read from the environment variable in brackets; the flag wins):
#   --nproc-per-node N   processes on this node [NPROC_PER_NODE]; default: one per GPU, or
#                        CPU_PROCS (default 4) gloo CPU processes when there is no GPU
#   --nnodes N           nodes of the run [NNODES] (multi-node only)
#   --node-rank R        this node, 0 .. N-1 [NODE_RANK] (multi-node only; node 0 hosts the
#                        rendezvous and must run on MASTER_ADDR)
#   --master-addr HOST   rendezvous host: the head node [MASTER_ADDR] (multi-node only; the
#                        single-node launcher always uses 127.0.0.1)
#   --master-port PORT   rendezvous port [MASTER_PORT], default 29500
#   --rdzv-id ID         rendezvous id, the same on every node [RDZV_ID], default hetero-sp
#   --max-restarts N     restarts of the workers after a failure [MAX_RESTARTS], default 0
#   --log-dir DIR        per-rank stdout/stderr logs [LOG_DIR], default runs/logs
#   --console-ranks L    local ranks shown on the console, e.g. 0 or 0,1 [CONSOLE_RANKS];
#                        default: all (the log files always have every rank)
# Every other argument goes to `python -m hetero_sp.train`: --config FILE, --dry-run,
# --dry-run-steps K, section.key=value overrides. Paths are relative to the repository root.

HSP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

hsp_die() {
  echo "launch: error: $*" >&2
  exit 2
}

# Split "$@" into launcher options (into their variables) and TRAIN_ARGS.
hsp_parse_args() {
  TRAIN_ARGS=()
  local flag value
  while (($#)); do
    flag=$1
    case $flag in
      --nproc-per-node | --nnodes | --node-rank | --master-addr | --master-port | --rdzv-id | \
        --max-restarts | --log-dir | --console-ranks)
        (($# >= 2)) || hsp_die "$flag needs a value"
        value=$2
        shift 2
        ;;
      --nproc-per-node=* | --nnodes=* | --node-rank=* | --master-addr=* | --master-port=* | \
        --rdzv-id=* | --max-restarts=* | --log-dir=* | --console-ranks=*)
        value=${flag#*=}
        flag=${flag%%=*}
        shift
        ;;
      -h | --help)
        sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
        sed -n '3,/^$/p' "$HSP_ROOT/launch/lib.sh" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
      *)
        TRAIN_ARGS+=("$1")
        shift
        continue
        ;;
    esac
    case $flag in
      --nproc-per-node) NPROC_PER_NODE=$value ;;
      --nnodes) NNODES=$value ;;
      --node-rank) NODE_RANK=$value ;;
      --master-addr) MASTER_ADDR=$value ;;
      --master-port) MASTER_PORT=$value ;;
      --rdzv-id) RDZV_ID=$value ;;
      --max-restarts) MAX_RESTARTS=$value ;;
      --log-dir) LOG_DIR=$value ;;
      --console-ranks) CONSOLE_RANKS=$value ;;
    esac
  done
}

hsp_require_int() { # NAME VALUE MIN
  [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3)) || hsp_die "$1 must be an integer >= $3, got '$2'"
}

# TORCHRUN: the repository's .venv when there is one, else torchrun on PATH.
hsp_find_torchrun() {
  if [[ -x $HSP_ROOT/.venv/bin/torchrun ]]; then
    TORCHRUN=$HSP_ROOT/.venv/bin/torchrun
  elif command -v torchrun >/dev/null 2>&1; then
    TORCHRUN=$(command -v torchrun)
  else
    hsp_die "no torchrun: run launch/install_cpu.sh (makes .venv) or install torch"
  fi
  HSP_PYTHON=$(dirname "$TORCHRUN")/python
  [[ -x $HSP_PYTHON ]] || HSP_PYTHON=python3
}

# NPROC_PER_NODE and DEVICE_NOTE: one process per visible GPU (as torch counts them, so
# CUDA_VISIBLE_DEVICES applies), or CPU_PROCS gloo CPU processes without a GPU.
hsp_detect_processes() {
  local gpus=0
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 || [[ -e /dev/nvidia0 ]]; then
    gpus=$("$HSP_PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
  fi
  if ((gpus > 0)); then
    DEVICE_NOTE="$gpus GPU(s) visible: NCCL"
    NPROC_PER_NODE=${NPROC_PER_NODE:-$gpus}
  else
    NPROC_PER_NODE=${NPROC_PER_NODE:-${CPU_PROCS:-4}}
    DEVICE_NOTE="no GPU found: falling back to $NPROC_PER_NODE gloo CPU processes"
  fi
  hsp_require_int NPROC_PER_NODE "$NPROC_PER_NODE" 1
}

hsp_is_loopback() {
  [[ $1 == 127.* || $1 == localhost || $1 == ::1 ]]
}

# The environment every worker inherits.
hsp_export_env() {
  # DeepSpeed's compiled op: kept when set, else a folder of this Python environment's own, so
  # runs from other checkouts or environments never rebuild it (hetero_sp/engine/deepspeed_ops.py).
  if [[ -z ${TORCH_EXTENSIONS_DIR:-} ]]; then
    TORCH_EXTENSIONS_DIR=$("$HSP_PYTHON" -m hetero_sp.engine.deepspeed_ops) ||
      hsp_die "$HSP_PYTHON cannot import hetero_sp: run launch/install_cpu.sh or pip install -e ."
  fi
  export TORCH_EXTENSIONS_DIR
  # NCCL: warnings only, and a failed collective ends the job instead of hanging it. Both are
  # ignored by gloo, so CPU runs are unaffected. NCCL_SOCKET_IFNAME (e.g. ib0) passes through.
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  if hsp_is_loopback "$MASTER_ADDR"; then
    export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
  fi
  # Processes of one node share its cores; torchrun would otherwise give each one thread.
  local cores
  cores=$(nproc 2>/dev/null || echo 1)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cores / NPROC_PER_NODE > 0 ? cores / NPROC_PER_NODE : 1))}
}

# Run torchrun (exec: its signals reach the agent, which passes them to the workers) for this
# node, through launch/torchrun.py where torchrun's own Python is known: on SIGINT or SIGTERM
# the workers stop after their step and rank 0 says how to resume, with no torchrun traceback.
hsp_exec_torchrun() {
  local is_host=0
  ((NODE_RANK == 0)) && is_host=1
  local runner=("$TORCHRUN")
  [[ $HSP_PYTHON == "$(dirname "$TORCHRUN")/python" ]] && runner=("$HSP_PYTHON" "$HSP_ROOT/launch/torchrun.py")
  local cmd=(
    "${runner[@]}"
    --nnodes "$NNODES"
    --nproc-per-node "$NPROC_PER_NODE"
    --rdzv-backend c10d
    --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"
    --rdzv-id "$RDZV_ID"
    --rdzv-conf "is_host=$is_host"
    --max-restarts "$MAX_RESTARTS"
    --log-dir "$LOG_DIR"
    --tee 3
  )
  # A loopback rendezvous: workers reach rank 0 over loopback too.
  hsp_is_loopback "$MASTER_ADDR" && cmd+=(--local-addr 127.0.0.1)
  [[ -n ${CONSOLE_RANKS:-} ]] && cmd+=(--local-ranks-filter "$CONSOLE_RANKS")
  cmd+=(-m hetero_sp.train "${TRAIN_ARGS[@]}")
  local host_note="joins it"
  ((is_host)) && host_note="this node hosts it"
  echo "launch: node $NODE_RANK of $NNODES, $NPROC_PER_NODE process(es) ($DEVICE_NOTE);" \
    "rendezvous c10d $MASTER_ADDR:$MASTER_PORT id $RDZV_ID ($host_note); max restarts" \
    "$MAX_RESTARTS; per-rank logs under $LOG_DIR; NCCL_DEBUG=$NCCL_DEBUG" \
    "NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-unset}; torchrun $TORCHRUN"
  exec "${cmd[@]}"
}

# Everything after parsing: defaults, checks, environment, torchrun.
hsp_launch() {
  MASTER_PORT=${MASTER_PORT:-29500}
  RDZV_ID=${RDZV_ID:-hetero-sp}
  MAX_RESTARTS=${MAX_RESTARTS:-0}
  LOG_DIR=${LOG_DIR:-runs/logs}
  hsp_require_int NNODES "$NNODES" 1
  hsp_require_int NODE_RANK "$NODE_RANK" 0
  ((NODE_RANK < NNODES)) || hsp_die "NODE_RANK must be below NNODES=$NNODES, got $NODE_RANK"
  hsp_require_int MASTER_PORT "$MASTER_PORT" 1
  hsp_require_int MAX_RESTARTS "$MAX_RESTARTS" 0
  cd "$HSP_ROOT"
  hsp_find_torchrun
  hsp_detect_processes
  hsp_export_env
  hsp_exec_torchrun
}
