#!/usr/bin/env bash
# Sets up the newest environment under .venvs/newest (once, a few minutes) and runs the offline demo.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${INTERNVL_VENVS:-.venvs}/newest
bash scripts/make_env.sh newest "$venv"
"$venv/bin/python" tools/demo.py "$@"
