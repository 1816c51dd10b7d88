#!/bin/bash
# The GPU session's checks (benchmarks/gpu_check.py), from the repository root:
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py flags...]
# e.g. bash benchmarks/gpu_check.sh /tmp/gpu_check
#      bash benchmarks/gpu_check.sh /tmp/gpu_check_smoke --cpu_smoke
set -euo pipefail
OUT=${1:-/tmp/gpu_check}
shift $(( $# > 0 ? 1 : 0 ))
cd "$(dirname "$0")/.."
exec "${KD_JAX_PYTHON:-python}" benchmarks/gpu_check.py --out="$OUT" "$@"
