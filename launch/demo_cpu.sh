#!/usr/bin/env bash
# The CPU demo from a fresh machine: install (if needed), then train the cpu-tiny hybrid model
# on 4 gloo ranks over the embedded corpus. Extra arguments are config overrides, e.g.
#   bash launch/demo_cpu.sh train.steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install_cpu.sh
# DeepSpeed's op is built in this environment's own folder (hetero_sp/engine/deepspeed_ops.py);
# launch/torchrun.py is torchrun without a traceback of its own on Ctrl-C.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$(.venv/bin/python -m hetero_sp.engine.deepspeed_ops)}
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
exec .venv/bin/python launch/torchrun.py --nproc_per_node "${NPROC:-4}" --master_addr 127.0.0.1 --master_port "${MASTER_PORT:-29500}" \
  -m hetero_sp.train --config configs/cpu-tiny.toml "$@"
