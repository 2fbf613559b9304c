#!/usr/bin/env bash
# Train across nodes: run this once on every node with the same NNODES, MASTER_ADDR (the head
# node, where NODE_RANK=0 runs and hosts the c10d rendezvous), MASTER_PORT and RDZV_ID, and
# each node's own NODE_RANK (under SLURM, SLURM_NODEID when NODE_RANK is not set).
#
#   head:   NNODES=2 NODE_RANK=0 MASTER_ADDR=node01 bash launch/torchrun_multi_node.sh --config FILE
#   other:  NNODES=2 NODE_RANK=1 MASTER_ADDR=node01 bash launch/torchrun_multi_node.sh --config FILE
#
# torchrun numbers the nodes itself (global ranks are contiguous per node); NODE_RANK decides
# which node hosts the rendezvous. Options: see launch/lib.sh (or --help). Everything else goes
# to `python -m hetero_sp.train`.

set -euo pipefail
. "$(dirname "$0")/lib.sh"
hsp_parse_args "$@"
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-}}
[[ -n ${NNODES:-} ]] || hsp_die "set NNODES (or --nnodes): the number of nodes of the run"
[[ -n $NODE_RANK ]] || hsp_die "set NODE_RANK (or --node-rank): this node's index, 0 on the head node"
[[ -n ${MASTER_ADDR:-} ]] || hsp_die "set MASTER_ADDR (or --master-addr): the head node's address"
hsp_launch
