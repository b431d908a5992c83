#!/usr/bin/env bash
# Sets up the newest environment under .venvs/newest (once) and runs the offline demo.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${INTERNVL_VENVS:-.venvs}/newest
if [ ! -f "$venv/.ready" ] || [ scripts/make_env.sh -nt "$venv/.ready" ] || [ setup.py -nt "$venv/.ready" ]; then
  echo "[demo] building the environment in $venv (a few minutes, once)"
  rm -rf "$venv"
  bash scripts/make_env.sh newest "$venv"
  touch "$venv/.ready"
fi
"$venv/bin/python" tools/demo.py "$@"
