#!/usr/bin/env bash
# The test suite on CPU (gloo ranks are local processes). Installs first if needed.
# Extra arguments go to pytest, e.g. bash launch/test_cpu.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/pytest ]] || bash launch/install_cpu.sh
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$(.venv/bin/python -m hetero_sp.engine.deepspeed_ops)}
exec .venv/bin/python -m pytest -q --durations=15 "$@"
