#!/bin/bash
# A whole ablation study on this machine: the shared teacher, then every cell,
# KD_JAX_PARALLEL cell processes at a time (default 1). Rerun the same
# command after an interruption: finished cells are skipped and unfinished
# ones resume from their checkpoints.
#   bash launch/local_study.sh STUDY.py [STUDY_DIR] [STUDY_ARG] [kd_jax.study flags...]
# e.g. KD_JAX_PARALLEL=2 bash launch/local_study.sh configs/quickstart_study.py /tmp/qs_study
#      bash launch/local_study.sh configs/cifar_grid.py studies/grid "" --vmap
# KD_JAX_PYTHON: the Python to use (default: python). Then:
#   python -m kd_jax.report STUDY_DIR
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash $0 STUDY.py [STUDY_DIR] [STUDY_ARG] [flags...]" >&2
  exit 2
fi
STUDY=$1
STUDY_DIR=${2:-}
STUDY_ARG=${3:-}
shift $(( $# < 3 ? $# : 3 ))
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${KD_JAX_PYTHON:-python}" -m kd_jax.study run "$STUDY" \
  ${STUDY_DIR:+--study_dir="$STUDY_DIR"} ${STUDY_ARG:+--arg="$STUDY_ARG"} \
  --parallel="${KD_JAX_PARALLEL:-1}" "$@"
