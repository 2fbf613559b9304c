#!/usr/bin/env bash
# Install HeteroSP for CPU work into ./.venv (idempotent): the CPU build of torch first, pinned
# by constraints/cpu.txt so no later package can swap it for a multi-GB CUDA build; DeepSpeed
# built against that torch; then HeteroSP itself with its test tools, data and Megatron extras;
# then DeepSpeed's op, compiled once here instead of at the first run.
# A stamp of the files that decide the install lets later calls return at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.hetero_sp_install
want=$(cat pyproject.toml constraints/cpu.txt launch/install_cpu.sh | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints/cpu.txt)
# PyPI's Linux torch wheels are CUDA builds (GBs). Where pip is not already set up to find the
# CPU build, point it at PyTorch's CPU index: HETERO_SP_TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX=()
if [[ -n ${HETERO_SP_TORCH_INDEX:-} ]]; then
  TORCH_INDEX=(--extra-index-url "$HETERO_SP_TORCH_INDEX")
fi
"${PIP[@]}" "${TORCH_INDEX[@]}" "torch==2.13.0" numpy setuptools wheel ninja
if [[ $(.venv/bin/python -c "import torch; print(torch.version.cuda or '')") ]]; then
  echo "note: pip installed a CUDA build of torch; for the CPU build run again with" \
    "HETERO_SP_TORCH_INDEX=https://download.pytorch.org/whl/cpu after rm -rf .venv" >&2
fi
# DeepSpeed ships as source only and imports torch while building: build it against the torch
# above instead of letting pip fetch another one into an isolated build environment.
"${PIP[@]}" --no-build-isolation "deepspeed==0.19.8"
"${PIP[@]}" -e ".[dev,data,megatron]"
.venv/bin/python -c "import torch, deepspeed, triton, pulp, highspy; print('installed: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| triton', triton.__version__, '| pulp', pulp.__version__)" 2>&1 | grep -v "real_accelerator"
# DeepSpeed compiles its CPU op on first use, 2-4 minutes of silence at the start of a run: build
# it now, into this environment's own folder (unless TORCH_EXTENSIONS_DIR is set), which the
# launch scripts and hetero_sp use too (hetero_sp/engine/deepspeed_ops.py).
.venv/bin/python -m hetero_sp.engine.deepspeed_ops --build 2>&1 | grep -v "real_accelerator"
echo "$want" > "$stamp"
