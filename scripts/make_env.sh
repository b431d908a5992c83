#!/usr/bin/env bash
# Builds one tested environment from its lock file:   bash scripts/make_env.sh WORLD VENV_DIR
#   pinned         xtuner 0.2.0's own pins (torch 2.5.1, transformers 4.48.0)
#   transformers4  the newest set on transformers 4 (torch 2.14.1, transformers 4.57.6)
#   newest         the current stack (torch 2.15.0, transformers 5.25.0; xtuner through internvl_plugin_bridge)
# locks/WORLD.txt lists every package at its exact version. They are installed as listed, without dependency
# resolution, so a build gives the same set whatever the registry publishes later; scripts/check_env.py then asserts
# it. An environment built from the same lock, script and setup.py is reused (and checked again).
set -euo pipefail
world=${1:?usage: make_env.sh WORLD VENV_DIR}
venv=${2:?usage: make_env.sh WORLD VENV_DIR}
cd "$(dirname "$0")/.."
locks=${INTERNVL_LOCKS:-locks}
case $locks in /*) ;; *) locks=$PWD/$locks ;; esac
lock=$locks/$world.txt
if [ ! -f "$lock" ]; then
  echo "make_env.sh: no lock file $lock for world '$world' (worlds: $(ls "$locks" | sed 's/\.txt$//' | xargs))" >&2
  exit 2
fi
marker=$venv/internvl-world
say() { echo "[make_env $world] $*"; }

if [ -f "$marker" ] && [ "$marker" -nt "$lock" ] && [ "$marker" -nt scripts/make_env.sh ] && [ "$marker" -nt setup.py ]
then
  say "reusing $venv"
  exec "$venv/bin/python" scripts/check_env.py "$lock"
fi
if [ -e "$venv" ]; then
  if [ ! -f "$marker" ] && [ ! -f "$venv/internvl-world.building" ]; then  # never delete what it did not make
    echo "make_env.sh: $venv exists and was not made by make_env.sh; remove it or name another folder" >&2
    exit 2
  fi
  rm -rf "$venv"
fi

# The lock is the only constraint: it replaces a constraint file the machine's pip configuration may name (the lock
# itself for the plugin's build, so its build dependencies are the locked setuptools).
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() {  # pip_install CONSTRAINTS ARGS...: quiet; on failure the package the registry lacks, or pip's log
  local log constraints=$1
  shift
  log=$(mktemp)
  if PIP_CONSTRAINT=$constraints "$venv/bin/python" -m pip install --no-deps "$@" >"$log" 2>&1; then
    rm -f "$log"
    return 0
  fi
  missing=$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$log" | head -n 1)
  if [ -n "$missing" ]; then
    echo "make_env.sh: world '$world' cannot be built: $missing (from $lock) is not on the package registry" >&2
  else
    grep -v 'is ignored: it is neither' "$log" >&2
    echo "make_env.sh: world '$world': pip failed (above)" >&2
  fi
  rm -f "$log"
  return 1
}

# A build takes about 8 GB (the venv and pip's unpacked wheels); on a full disk pip fails deep in its install.
need_gb=${INTERNVL_BUILD_GB:-8}
mkdir -p "$(dirname "$venv")"
free_gb=$(df -Pk "$(dirname "$venv")" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "make_env.sh: world '$world' needs about $need_gb GB free beside $venv, which has $free_gb GB" >&2
  exit 2
fi
say "creating $venv"
python3 -m venv "$venv"
touch "$venv/internvl-world.building"
say "installing the $(grep -c '^[^#].*==' "$lock") packages of $lock (a few GB the first time, about 2-5 minutes)"
pip_install /dev/null -r "$lock"
say "installing internvl_plugin (editable)"
pip_install "$lock" -e .
"$venv/bin/python" scripts/check_env.py "$lock"
rm -f "$venv/internvl-world.building"
echo "$world" > "$marker"
