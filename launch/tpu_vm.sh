#!/usr/bin/env bash
# One training job on a Cloud TPU VM slice: run the same command on every worker.
#   launch/tpu_vm.sh TPU_NAME ZONE --config=configs/paper.py:1.2B --workdir=gs://bucket/runs/1.2B
# Each worker needs this checkout at ~/gqa-costlaw with `bash launch/setup_env.sh` run once (and
# `pip install 'jax[tpu]'` in .venv). jax.distributed reads the TPU VM environment by itself.
set -euo pipefail
tpu=$1 zone=$2
shift 2
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd ~/gqa-costlaw && .venv/bin/python -m experiments.train $(printf '%q ' "$@")"
