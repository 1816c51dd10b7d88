#!/bin/bash
# One kd_jax run on a SLURM cluster.
#   sbatch launch/slurm_train.sh configs/ctkd_ghostnet.py[:arg] WORKDIR [--config.x=y ...]
# Several GPUs and nodes: override the task layout on the command line (give
# --ntasks: the header's --ntasks=1 would cap --ntasks-per-node), e.g. 2 nodes
# of 8 GPUs, one task per GPU, or one task per node driving its 8 GPUs:
#   sbatch --nodes=2 --ntasks=16 --ntasks-per-node=8 launch/slurm_train.sh CONFIG WORKDIR
#   sbatch --nodes=2 --ntasks=2 --ntasks-per-node=1 --gpus-per-task=8 launch/slurm_train.sh CONFIG WORKDIR
# Every task runs the same command; kd_jax sees SLURM_NTASKS > 1 and calls
# jax.distributed.initialize(), which reads the job's environment (the GPUs a
# task drives: kd_jax/train/sharding.py slurm_local_devices). The global
# batch is config.batch_size, split over every GPU; each task reads and
# prefetches only its own rows. WORKDIR must be on a file system every node
# sees.
# Preempted or timed-out jobs: resubmit the same command; it resumes from the
# latest checkpoint in WORKDIR.
#SBATCH --job-name=kd_jax
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch $0 CONFIG[:arg] WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
srun python -m kd_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
