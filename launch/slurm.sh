#!/usr/bin/env bash
# sbatch template: one jaxcls training over several hosts (one process per host, all of the
# host's GPUs each). Copy, adjust the #SBATCH lines and the environment, then
#
#   sbatch launch/slurm.sh --config configs/default.py --workdir /shared/runs/exp1 [--config.X=Y]
#
# srun starts one task per node; inside each, jax.distributed.initialize() (called by
# jaxcls.training.parallel.initialize_distributed when SLURM_NTASKS > 1) reads the coordinator, the
# process count and this process's id from SLURM's variables. Each process reads its own shard
# of every batch, Orbax writes the checkpoints collectively, and process 0 writes the logs and
# results.json, so --workdir must be on a file system every node sees. Re-submitting the same
# command resumes from the latest checkpoint.
#
#SBATCH --job-name=jaxcls
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# Activate the environment jaxcls is installed in (e.g. the repository's .venv).
if [[ -f .venv/bin/activate ]]; then source .venv/bin/activate; fi

srun --kill-on-bad-exit=1 python -m jaxcls.main "$@"
