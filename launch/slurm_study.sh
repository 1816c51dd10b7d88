#!/bin/bash
# A whole ablation study on SLURM: one job trains the shared teacher, then an
# array job runs one cell per task (after the teacher succeeded).
#   sbatch launch/slurm_study.sh STUDY.py [STUDY_DIR] [STUDY_ARG]
#   bash   launch/slurm_study.sh STUDY.py ...        # same, from a login node
#   KD_JAX_DRY_RUN=1 bash launch/slurm_study.sh configs/echo_study.py
#       prints the sbatch submissions and every cell's command, runs nothing.
# e.g. sbatch launch/slurm_study.sh configs/echo_study.py studies/echo \
#        dataset.name=folder,dataset.data_dir=/data/echo
# Without SLURM_ARRAY_TASK_ID this script is the dispatcher: it submits the
# teacher job (KD_JAX_CELL=teacher) and the array 0..N-1 (N = cells of the
# study, at most KD_JAX_MAX_PARALLEL running at once) with
# --dependency=afterok:<teacher job>. Each task runs `srun <cell command>`.
# Several GPUs per cell: KD_JAX_TASKS_PER_CELL=4 submits every job with
# --ntasks=4 (one task per GPU); kd_jax sees SLURM_NTASKS > 1 and calls
# jax.distributed.initialize(). Finished cells exit at once and unfinished
# ones resume from their checkpoints: resubmitting continues the study.
# Then: python -m kd_jax.report STUDY_DIR
#SBATCH --job-name=kd_study
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: sbatch $0 STUDY.py [STUDY_DIR] [STUDY_ARG]" >&2
  exit 2
fi
STUDY=$1
DIR=${2:-studies/$(basename "$STUDY" .py)}
ARG=${3:-}
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -z "${KD_JAX_PYTHON:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
PY=${KD_JAX_PYTHON:-python}
TASKS=${KD_JAX_TASKS_PER_CELL:-1}
MAX=${KD_JAX_MAX_PARALLEL:-16}
study() { "$PY" -m kd_jax.study "$1" "$STUDY" --study_dir="$DIR" --arg="$ARG" "${@:2}"; }
maybe() { if [ -n "${KD_JAX_DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi; }

run_cell() {  # $1: cell index or 'teacher'
  local cmd
  cmd=$(study command --index="$1")
  eval "set -- $cmd"  # the command is shell-quoted by kd_jax.study
  maybe srun --ntasks="$TASKS" "$@"
}

INDEX=${KD_JAX_CELL:-${SLURM_ARRAY_TASK_ID:-}}
if [ -n "$INDEX" ]; then
  run_cell "$INDEX"
  exit
fi

# --- dispatcher
if [ -n "${SLURM_JOB_ID:-}" ] && [ -f "${SLURM_SUBMIT_DIR:-.}/launch/slurm_study.sh" ]; then
  SELF="${SLURM_SUBMIT_DIR:-.}/launch/slurm_study.sh"  # $0 is SLURM's spool copy
else
  SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
fi
N=$(study count)
DEPEND=()
if study command --index=teacher >/dev/null 2>&1; then
  if [ -n "${KD_JAX_DRY_RUN:-}" ]; then
    TEACHER_JOB=TEACHER_JOB_ID
    echo "sbatch --parsable --job-name=kd_teacher --ntasks=$TASKS --export=ALL,KD_JAX_CELL=teacher $SELF $STUDY $DIR $ARG"
  else
    TEACHER_JOB=$(sbatch --parsable --job-name=kd_teacher --ntasks="$TASKS" \
      --export=ALL,KD_JAX_CELL=teacher "$SELF" "$STUDY" "$DIR" "$ARG")
    TEACHER_JOB=${TEACHER_JOB%%;*}
    echo "submitted teacher job $TEACHER_JOB"
  fi
  DEPEND=(--dependency=afterok:"$TEACHER_JOB")
fi
maybe sbatch --array=0-$((N - 1))%"$MAX" --ntasks="$TASKS" "${DEPEND[@]}" \
  "$SELF" "$STUDY" "$DIR" "$ARG"
if [ -n "${KD_JAX_DRY_RUN:-}" ]; then
  echo "# what each job runs (array task i runs cell i):"
  study commands | while IFS=$'\t' read -r index cmd; do
    echo "[$index] srun --ntasks=$TASKS $cmd"
  done
fi
