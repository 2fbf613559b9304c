#!/usr/bin/env bash
# Train on this machine: one process per GPU (NCCL), or without a GPU CPU_PROCS (default 4)
# gloo processes. The rendezvous is on 127.0.0.1, so a single-node run needs no network.
#
#   bash launch/torchrun_single_node.sh --config configs/cpu-tiny.toml train.steps=20
#   bash launch/torchrun_single_node.sh --nproc-per-node 2 --max-restarts 3 --config FILE
#   bash launch/torchrun_single_node.sh --dry-run --config FILE     # plans only, no training
#
# Options: see launch/lib.sh (or --help). Everything else goes to `python -m hetero_sp.train`.

set -euo pipefail
. "$(dirname "$0")/lib.sh"
hsp_parse_args "$@"
NNODES=1
NODE_RANK=0
MASTER_ADDR=127.0.0.1
hsp_launch
