#!/usr/bin/env bash
# hirune on several nodes under SLURM: one srun task per node, torchrun starts one process per GPU.
#   sbatch --nodes=2 --gpus-per-node=8 scripts/slurm_train.sh vpred-mnist5k strategy=zero2 batch_size=1024
#SBATCH --job-name=hirune
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun --kill-on-bad-exit=1 .venv/bin/python -m torch.distributed.run \
    --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" --rdzv-id "$SLURM_JOB_ID" \
    -m hirune train "$@"
