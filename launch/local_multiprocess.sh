#!/usr/bin/env bash
# Run one training job as N processes on this machine (each with D simulated CPU devices), the way a
# multi-host job runs: usage: launch/local_multiprocess.sh N D --config=... --workdir=... [--config.x=...]
set -euo pipefail
cd "$(dirname "$0")/.."
n=$1 devices=$2
shift 2
port=$(.venv/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
    .venv/bin/python -m experiments.train "$@" --coordinator="127.0.0.1:$port" --num_processes="$n" --process_id="$i" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
